"""The fault matrix's Usage Engine API rows (tests/reliability/matrix.py): one EventBridge-shaped record on the
real (moto) meter-events queue, delivered by the local SQS event source to the meter_events handler, with
the API failing, refusing or answering slowly; meter_query invoked with a short timeout (deadlines) or against
an API that rejects every token; and containers modelled as Lambda builds them (tests/reliability/harness/
storms.py) holding a token the API revokes.

Retry waits are recorded instead of slept; a slow answer is a request the emulator holds (until the test
ends, or until the test releases it), so a read timeout trips whatever the machine's speed.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import time_machine

from local.lambda_runtime import invoke, load_event
from local.usage_engine_emulator import RequestHold
from tests.conftest import REFRESHER_NAME
from tests.reliability import matrix
from tests.reliability.harness.check import rows_of, run_row
from tests.reliability.harness.consumer import (
    create_meter,
    deliver,
    deliver_batch,
    install_container_client,
    meter_event,
    meters,
    receive,
    redeliver_after_recovery,
    run_consumer,
    source_of,
    spy_on_errors,
    visible_again,
)
from tests.reliability.harness.context import Ctx, Fate, Observation, scenario, snapshot, versions
from tests.reliability.harness.faults import AwsFaults
from tests.reliability.harness.query import ask, observing, prepare
from tests.reliability.harness.refresher import assert_backoff_schedule, idp_requests
from tests.reliability.harness.storms import RefresherRuns, all_at_once, get_status, new_container, refresh_now
from usage_engine import Components, ConsumerSettings, UsageMeteringApi
from usage_engine.api_client import api_session


@pytest.mark.parametrize("row", rows_of(matrix.API))
def test_fault(row: matrix.Row, ctx: Ctx) -> None:
    run_row(row, ctx)


@scenario("api-401-once")
def _(ctx: Ctx) -> Observation:
    # Right after the seeding refresh: the first rejection of a token is honoured at any age.
    obs = run_consumer(ctx, create_meter(), lambda: ctx.emulator.fail_next_api_requests(1, 401))
    assert meters(ctx) == ["ref-1"]
    assert idp_requests(ctx) == 2
    return obs


@scenario("api-401-always")
def _(ctx: Ctx) -> Observation:
    obs = run_consumer(ctx, create_meter(), lambda: ctx.emulator.fail_next_api_requests(1000, 401), travel=300)
    assert obs.fate is not None
    assert obs.fate.redelivery is not None
    message_id = obs.fate.redelivery["MessageId"]
    # Each redelivery tries to heal once and hits the refresher's backoff: no second IdP request, no loop.
    source = source_of(ctx.deployment)
    message: dict[str, Any] | None = obs.fate.redelivery
    deliveries = 1
    with time_machine.travel(time.time() + 300, tick=True):
        while message is not None and deliveries < 10:
            result = source.deliver([message])
            deliveries += 1
            # The last delivery SQS makes (maxReceiveCount 5) dead-letters it with its reason: never dropped.
            assert result.failed == ([] if deliveries == 5 else [message["MessageId"]])
            received = source.receive()
            message = received[0] if received else None
        moved = receive(ctx.deployment.resources.dead_letter_queue_url)
    assert deliveries == 5
    (letter,) = moved
    attributes = letter["MessageAttributes"]
    assert attributes["sourceMessageId"]["StringValue"] == message_id
    reason = attributes["reason"]["StringValue"]
    assert "(HTTP 401)" in reason
    assert reason.endswith("after 5 deliveries")
    assert idp_requests(ctx) == 2
    assert meters(ctx) == []
    return obs


@scenario("api-403")
def _(ctx: Ctx) -> Observation:
    return run_consumer(ctx, create_meter(), lambda: ctx.emulator.fail_next_api_requests(1, 403))


@scenario("api-404")
def _(ctx: Ctx) -> Observation:
    obs = run_consumer(ctx, meter_event("Update Meter", {"meterId": "no-such-meter", "value": 5}))
    assert ctx.emulator.api_status_counts == {404: 1}
    return obs


@scenario("api-404-delete")
def _(ctx: Ctx) -> Observation:
    obs = run_consumer(ctx, meter_event("Delete Meter", {"meterId": "already-gone"}))
    assert ctx.emulator.api_status_counts == {404: 1}
    return obs


@scenario("api-409-concurrent-create")
def _(ctx: Ctx) -> Observation:
    def fault() -> None:
        # Another container: its own clients, token cache and session.
        other_container = UsageMeteringApi(Components().client(ConsumerSettings.from_env()))
        session = api_session()
        send = session.request
        raced: list[bool] = []

        def racing_request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            if method == "POST" and not raced:
                raced.append(True)
                # Another delivery of the same record wins the race between lookup and create.
                other_container.create_meter(
                    domain="acme", external_ref="ref-1", meter_type_id="api-calls", user_id="user-1"
                )
            return send(method, url, *args, **kwargs)

        session.request = racing_request  # type: ignore[method-assign]
        install_container_client(ctx, session=session)

    obs = run_consumer(ctx, create_meter(), fault)
    assert meters(ctx) == ["ref-1"]
    assert ctx.emulator.api_status_counts.get(409) == 1
    return obs


@scenario("api-409-no-meter")
def _(ctx: Ctx) -> Observation:
    # Only the create's body names the user; the lookup's query does not.
    obs = run_consumer(
        ctx, create_meter(user="user-409"), lambda: ctx.emulator.fail_api_requests_matching("user-409", 409)
    )
    assert meters(ctx) == []
    return obs


@scenario("api-413")
def _(ctx: Ctx) -> Observation:
    return run_consumer(
        ctx, create_meter(user="user-413"), lambda: ctx.emulator.fail_api_requests_matching("user-413", 413)
    )


@scenario("api-429-retry-after")
def _(ctx: Ctx) -> Observation:
    obs = run_consumer(ctx, create_meter(), lambda: ctx.emulator.fail_next_api_requests(2, 429, retry_after=3))
    assert ctx.backoff.http == [3, 3]
    assert meters(ctx) == ["ref-1"]
    return obs


@scenario("api-429-create")
def _(ctx: Ctx) -> Observation:
    obs = run_consumer(
        ctx, create_meter(user="user-429"), lambda: ctx.emulator.fail_api_requests_matching("user-429", 429)
    )
    assert ctx.emulator.api_status_counts == {200: 1, 429: 1}
    redeliver_after_recovery(ctx, obs)
    assert meters(ctx) == ["ref-1"]
    return obs


@scenario("api-500")
def _(ctx: Ctx) -> Observation:
    obs = run_consumer(ctx, create_meter(), lambda: ctx.emulator.fail_next_api_requests(1, 500))
    assert ctx.emulator.api_requests == 1
    return obs


@scenario("api-503")
def _(ctx: Ctx) -> Observation:
    obs = run_consumer(ctx, create_meter(), lambda: ctx.emulator.fail_next_api_requests(4, 503))
    assert ctx.emulator.api_requests == 4
    assert_backoff_schedule(ctx.backoff.http)
    return obs


@scenario("api-read-timeout")
def _(ctx: Ctx) -> Observation:
    held: list[RequestHold] = []

    def fault() -> None:
        install_container_client(ctx, timeout=(1.0, 0.15))
        # Parked requests are never answered before the test ends, so every attempt times out.
        held.append(ctx.hold_api_requests())

    obs = run_consumer(ctx, create_meter(), fault)
    (hold,) = held
    # The server may see the last attempt after the client gave up on it: wait for it, not for the clock.
    hold.wait_parked(4)
    assert ctx.emulator.api_requests == 4
    assert hold.parked == 4
    return obs


@scenario("api-read-timeout-create")
def _(ctx: Ctx) -> Observation:
    held: list[RequestHold] = []

    def fault() -> None:
        install_container_client(ctx, timeout=(1.0, 0.3))
        # The lookup (GET) is answered; the create is parked until the client has stopped waiting.
        held.append(ctx.hold_api_requests(method="POST"))

    obs = run_consumer(ctx, create_meter(), fault)
    (hold,) = held
    # The API applies the create after the client gave up on it.
    hold.release()
    hold.wait_finished(1)
    assert meters(ctx) == ["ref-1"]
    # The redelivery finds the meter that create made, and makes no second one.
    redeliver_after_recovery(ctx, obs)
    assert meters(ctx) == ["ref-1"]
    assert ctx.emulator.api_status_counts.get(201) == 1
    assert 409 not in ctx.emulator.api_status_counts
    return obs


@scenario("api-connection-reset")
def _(ctx: Ctx) -> Observation:
    port = ctx.fixture("resetting_port")
    obs = run_consumer(
        ctx, create_meter(), lambda: ctx.monkeypatch.setenv("USAGE_ENGINE_API_URL", f"http://127.0.0.1:{port}")
    )
    assert_backoff_schedule(ctx.backoff.http)
    return obs


@scenario("api-dlq-unreachable")
def _(ctx: Ctx) -> Observation:
    faults: AwsFaults = ctx.fixture("sqs_faults")
    malformed = meter_event("Create Meter", {"domain": "acme", "externalRef": "ref-1", "meterTypeId": "api-calls"})
    obs = run_consumer(ctx, malformed, lambda: faults.fail("SendMessage", "AccessDenied"))
    assert faults.injected["SendMessage"] == 1
    return obs


# --- deadlines: every wait ends by the deadline (the timeout minus 1 s in meter_query, 2 s in meter_events) ------


@scenario("api-silent-meter-query")
def _(ctx: Ctx) -> Observation:
    prepare(ctx)
    hold = ctx.hold_api_requests()
    with observing(ctx) as obs:
        ask(obs, timeout=2.0)
    # The held request is never answered: the handler stopped waiting on its own, at its deadline.
    hold.wait_parked(1)
    assert ctx.emulator.api_requests == 1, "a retry would have started at or past the deadline"
    assert ctx.backoff.http == []
    # Answered with the 1 s margin still ahead of the timeout (a 10 s read timeout would have run past it).
    assert obs.left_ms[-1] > 0
    return obs


BATCH = 3
# meter_events keeps 2 s of its timeout for answering and starts a record only with 5 s left: with 8.5 s, the
# first record starts whatever the machine's speed (1.5 s to spare) and its one attempt ends at the deadline,
# after which no record can start.
BATCH_TIMEOUT_SECONDS = 8.5


@scenario("api-silent-meter-events-batch")
def _(ctx: Ctx) -> Observation:
    ctx.fixture("consumers")
    invoke("token_refresher", load_event("refresher-scheduled.json"))
    ctx.container()
    hold = ctx.hold_api_requests()
    obs = Observation(before=snapshot(ctx.deployment), versions_before=versions(ctx.deployment))
    obs.errors_seen = spy_on_errors(ctx)
    ctx.output()
    bodies = [create_meter(f"ref-{i}", f"user-{i}") for i in range(BATCH)]
    result, context = deliver_batch(ctx, bodies, timeout_seconds=BATCH_TIMEOUT_SECONDS)
    left_ms = context.get_remaining_time_in_millis()
    obs.out = ctx.output()
    obs.after, obs.versions_after = snapshot(ctx.deployment), versions(ctx.deployment)
    # Not applied, so listed for SQS to redeliver; none dropped, none dead-lettered.
    assert sorted(result.failed) == sorted(result.received)
    assert sorted(visible_again(ctx)) == sorted(result.received)
    assert receive(ctx.deployment.resources.dead_letter_queue_url) == []
    assert meters(ctx) == []
    obs.fate = Fate(matrix.RETRY)
    # One request: the first record's lookup, whose read timeout ended at the deadline (no retry, no 10 s wait).
    hold.wait_parked(1)
    assert ctx.emulator.api_requests == 1
    assert obs.errors_seen == ["UsageEngineApiError"]
    deferred = [value for line in obs.out.lines for value in _values(line, "MeterEventsDeferred")]
    assert sum(deferred) == BATCH - 1
    assert left_ms > 0, "meter_events answered after its timeout: Lambda would have lost the batch response"
    return obs


def _values(line: dict[str, Any], metric: str) -> list[float]:
    """An EMF document's values of `metric` (Powertools keeps one per add_metric call)."""
    if "_aws" not in line or metric not in line:
        return []
    value = line[metric]
    return [float(v) for v in value] if isinstance(value, list) else [float(value)]


@scenario("api-retry-after-beyond-deadline")
def _(ctx: Ctx) -> Observation:
    prepare(ctx)
    ctx.emulator.fail_next_api_requests(4, 503, retry_after=8)
    with observing(ctx) as obs:
        ask(obs, timeout=4.0)
    # 3 s to the deadline, 8 s to wait: the 503 is the answer, without waiting for anything.
    assert ctx.emulator.api_requests == 1
    assert ctx.backoff.http == []
    return obs


@scenario("api-retry-after-negative")
def _(ctx: Ctx) -> Observation:
    obs = run_consumer(ctx, create_meter(), lambda: ctx.emulator.fail_next_api_requests(2, 503, retry_after=-1))
    # No hint: urllib3's backoff, which waits nothing before the first retry and 1-1.5 s before the second.
    assert len(ctx.backoff.http) == 1, ctx.backoff.http
    assert 1.0 <= ctx.backoff.http[0] <= 1.5
    assert ctx.emulator.api_status_counts == {503: 2, 200: 1, 201: 1}
    assert meters(ctx) == ["ref-1"]
    return obs


# --- tokens the API rejects --------------------------------------------------------------------------------------

CONTAINERS = 8


@scenario("api-401-seconds-after-refresh")
def _(ctx: Ctx) -> Observation:
    ctx.fixture("consumers")
    runs = RefresherRuns().install(ctx.monkeypatch)
    refresh_now()
    containers = [new_container(runs) for _ in range(CONTAINERS)]
    # Every container has the token cached.
    assert [get_status(container.client) for container in containers] == [200] * CONTAINERS
    with observing(ctx) as obs:
        ctx.emulator.revoke_all_tokens()
        statuses, errors = all_at_once(CONTAINERS, lambda i: get_status(containers[i].client))
        obs.returned = statuses
        obs.error = errors[0] if errors else None
    assert statuses == [200] * CONTAINERS
    assert idp_requests(ctx) == 1 + 1
    assert {container.tokens.get().value for container in containers} == {ctx.emulator.issued_tokens[-1]}
    return obs


@scenario("api-401-persistent-backoff")
def _(ctx: Ctx) -> Observation:
    prepare(ctx)
    ctx.emulator.fail_next_api_requests(10_000, 401)
    endpoint = ctx.fixture("lambda_endpoint_server")
    invokes = endpoint.invocations(REFRESHER_NAME)
    with observing(ctx) as obs:
        for _ in range(4):
            ask(obs)
    # Each query reported its token once; only the first report cost an IdP request and a version.
    assert endpoint.invocations(REFRESHER_NAME) - invokes == 4
    assert idp_requests(ctx) == 1 + 1
    skipped = [line["reason"] for line in obs.out.logs if line.get("message") == "Token refresh skipped"]
    assert skipped == ["rejected-within-cooldown"] * 3
    # The 1st query resent once with the new token; the others were not resent with the token just refused.
    assert ctx.emulator.api_requests == 2 + 3
    return obs


@scenario("api-create-503-then-delete")
def _(ctx: Ctx) -> Observation:
    detail = {"domain": "acme", "externalRef": "ref-1", "meterTypeId": "api-calls", "userId": "user-1"}
    create = meter_event("Create Meter", {**detail, "sequence": 1})
    obs = run_consumer(ctx, create, lambda: ctx.emulator.fail_api_requests_matching("ref-1", 503))
    assert obs.fate is not None
    assert obs.fate.redelivery is not None
    ctx.emulator.clear_api_faults()
    # Before SQS redelivers the Create (180 s later), the publisher's Delete of the same meter is applied.
    delete = meter_event("Delete Meter", {"domain": "acme", "externalRef": "ref-1", "sequence": 2})
    assert deliver(ctx, delete).outcome == matrix.APPLIED
    assert source_of(ctx.deployment).deliver([obs.fate.redelivery]).failed == []
    assert meters(ctx) == []
    return obs


@scenario("api-update-before-create")
def _(ctx: Ctx) -> Observation:
    update = meter_event("Update Meter", {"domain": "acme", "externalRef": "ref-2", "value": 5, "sequence": 2})
    obs = run_consumer(ctx, update)
    assert obs.fate is not None
    assert obs.fate.redelivery is not None
    assert receive(ctx.deployment.resources.dead_letter_queue_url) == []
    detail = {"domain": "acme", "externalRef": "ref-2", "meterTypeId": "api-calls", "userId": "user-1"}
    assert deliver(ctx, meter_event("Create Meter", {**detail, "sequence": 1})).outcome == matrix.APPLIED
    assert source_of(ctx.deployment).deliver([obs.fate.redelivery]).failed == []
    (meter,) = ctx.emulator.meters
    assert (meter["externalRef"], meter["value"]) == ("ref-2", 5)
    return obs


@scenario("api-hostile-meter-id")
def _(ctx: Ctx) -> Observation:
    obs = run_consumer(ctx, meter_event("Update Meter", {"meterId": "..", "value": 1}))
    assert ctx.emulator.api_requests == 0
    return obs


@scenario("api-hostile-meter-id-delete")
def _(ctx: Ctx) -> Observation:
    obs = run_consumer(ctx, meter_event("Delete Meter", {"meterId": "."}))
    assert ctx.emulator.api_requests == 0
    return obs
