"""The fault matrix's Usage Engine API rows (tests/reliability/matrix.py): one EventBridge-shaped record on the
real (moto) meter-events queue, delivered by the local SQS event source to the meter_events handler, with
the API failing, refusing or answering slowly.

Retry waits are recorded instead of slept; a slow answer is a request the emulator holds (until the test
ends, or until the test releases it), so a read timeout trips whatever the machine's speed.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import time_machine

from local.usage_engine_emulator import RequestHold
from tests.reliability import matrix
from tests.reliability.harness.check import rows_of, run_row
from tests.reliability.harness.consumer import (
    create_meter,
    install_container_client,
    meter_event,
    meters,
    receive,
    redeliver_after_recovery,
    run_consumer,
    source_of,
)
from tests.reliability.harness.context import Ctx, Observation, scenario
from tests.reliability.harness.faults import AwsFaults
from tests.reliability.harness.refresher import assert_backoff_schedule, idp_requests
from usage_engine import Components, ConsumerSettings, UsageMeteringApi
from usage_engine.api_client import api_session


@pytest.mark.parametrize("row", rows_of(matrix.API))
def test_fault(row: matrix.Row, ctx: Ctx) -> None:
    run_row(row, ctx)


@scenario("api-401-once")
def _(ctx: Ctx) -> Observation:
    # Five minutes after the refresh, so the refresher's cooldown for brand-new tokens is over.
    obs = run_consumer(ctx, create_meter(), lambda: ctx.emulator.fail_next_api_requests(1, 401), travel=300)
    assert meters(ctx) == ["ref-1"]
    assert idp_requests(ctx) == 2
    return obs


@scenario("api-401-always")
def _(ctx: Ctx) -> Observation:
    obs = run_consumer(ctx, create_meter(), lambda: ctx.emulator.fail_next_api_requests(1000, 401), travel=300)
    assert obs.fate is not None
    assert obs.fate.redelivery is not None
    message_id = obs.fate.redelivery["MessageId"]
    # Each redelivery tries to heal once and hits the refresher's cooldown: no second IdP request, no loop.
    source = source_of(ctx.deployment)
    message: dict[str, Any] | None = obs.fate.redelivery
    deliveries = 1
    with time_machine.travel(time.time() + 300, tick=True):
        while message is not None and deliveries < 10:
            result = source.deliver([message])
            assert result.failed == [message["MessageId"]]
            deliveries += 1
            received = source.receive()
            message = received[0] if received else None
        # SQS's redrive policy (maxReceiveCount 5) moved it to the dead-letter queue: never dropped.
        moved = receive(ctx.deployment.resources.dead_letter_queue_url)
    assert deliveries == 5
    assert [m["MessageId"] for m in moved] == [message_id]
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
