"""Per-meter order with real SQS semantics: moto's queue (visibility timeout, receive counts, redrive to the
dead-letter queue) driven by the local event source on a virtual clock, moto's DynamoDB for the meter state
table, the handler invoked as Lambda invokes it, and the Usage Engine emulator with injected faults."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from local.lambda_runtime import invoke, load_event
from local.resources import publish_meter_events
from local.sqs_event_source import SqsEventSource
from local.stack import METER_STATE_TABLE
from tests.conftest import Deployment, LambdaOutput
from usage_engine import reset_components
from usage_engine.errors import RetryableMessageError
from usage_engine.meter_order import MeterKey, MeterState, Position
from usage_engine.meter_state import STATE_TTL_SECONDS, MeterStateTable

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
KEY = {"domain": "acme"}


@pytest.fixture
def meters(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    # Until template.yaml gives MeterEventsFunction this variable, the fixture sets it as the template would.
    monkeypatch.setenv("METER_STATE_TABLE", METER_STATE_TABLE)
    invoke("token_refresher", load_event("refresher-scheduled.json"))
    return deployment


def source_of(deployment: Deployment) -> SqsEventSource:
    resources = deployment.resources
    return SqsEventSource(resources.queue_url, resources.queue_arn, "meter_events", redeliver_at_once=False)


def create(ref: str, seconds: int, user: str = "user-1") -> tuple[str, dict[str, Any], datetime]:
    detail = {**KEY, "externalRef": ref, "meterTypeId": "api-calls", "userId": user}
    return ("Create Meter", detail, T0 + timedelta(seconds=seconds))


def update(ref: str, seconds: int, value: int) -> tuple[str, dict[str, Any], datetime]:
    return ("Update Meter", {**KEY, "externalRef": ref, "value": value}, T0 + timedelta(seconds=seconds))


def delete(ref: str, seconds: int) -> tuple[str, dict[str, Any], datetime]:
    return ("Delete Meter", {**KEY, "externalRef": ref}, T0 + timedelta(seconds=seconds))


def dead_letters(deployment: Deployment) -> list[dict[str, Any]]:
    response = boto3.client("sqs").receive_message(
        QueueUrl=deployment.resources.dead_letter_queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    )
    return list(response.get("Messages", []))


def queue_is_empty(deployment: Deployment) -> bool:
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=deployment.resources.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return attributes == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}


def state_of(ref: str) -> MeterState:
    return MeterStateTable(boto3.client("dynamodb"), METER_STATE_TABLE).read(MeterKey("acme", ref))


def test_a_create_that_failed_is_not_applied_after_its_delete(
    meters: Deployment, lambda_stdout: Callable[[], LambdaOutput]
) -> None:
    emulator, bus = meters.emulator, meters.resources.event_bus
    source = source_of(meters)
    # Only the create's POST names this user: its lookup succeeds, the POST gets a 503.
    emulator.fail_api_requests_matching("user-503", 503)
    publish_meter_events(bus, [create("ref-1", 0, user="user-503")])
    first = source.poll_once()
    assert len(first.failed) == 1
    (create_id,) = first.failed

    emulator.clear_api_faults()
    publish_meter_events(bus, [delete("ref-1", 60)])
    deleted = source.poll_once()
    assert deleted.failed == []
    assert create_id not in deleted.received
    assert state_of("ref-1") == MeterState(last=Position(T0_MS + 60_000), deleted=True)
    lambda_stdout()

    # 180 s later (the queue's visibility timeout) SQS redelivers the create: acknowledged as superseded.
    assert source.advance(source.visibility_timeout) == [create_id]
    messages = source.receive()
    assert [(m["MessageId"], m["Attributes"]["ApproximateReceiveCount"]) for m in messages] == [(create_id, "2")]
    assert source.deliver(messages).failed == []
    assert emulator.meters == []
    assert dead_letters(meters) == []
    assert queue_is_empty(meters)
    assert lambda_stdout().metric("MeterEventsSuperseded") == 1


def test_an_update_before_its_create_is_retried_then_applied(meters: Deployment) -> None:
    source = source_of(meters)
    bus = meters.resources.event_bus
    publish_meter_events(bus, [update("ref-2", 10, 42)])
    (update_id,) = source.poll_once().failed
    publish_meter_events(bus, [create("ref-2", 0)])
    assert source.poll_once().failed == []
    assert [m["value"] for m in meters.emulator.meters] == [0]

    source.advance(source.visibility_timeout)
    redelivered = source.poll_once()
    assert (redelivered.received, redelivered.failed) == ([update_id], [])
    assert [(m["externalRef"], m["value"]) for m in meters.emulator.meters] == [("ref-2", 42)]
    assert dead_letters(meters) == []
    assert queue_is_empty(meters)


def test_an_update_whose_meter_never_appears_is_dead_lettered_with_the_reason_on_its_last_delivery(
    meters: Deployment,
) -> None:
    source = source_of(meters)
    publish_meter_events(meters.resources.event_bus, [update("ref-3", 10, 1)])
    batches = source.drain()
    # Five deliveries (the queue's maxReceiveCount): four retried, the fifth dead-lettered by the handler.
    assert [len(batch.failed) for batch in batches] == [1, 1, 1, 1, 0]
    assert source.now == 4 * source.visibility_timeout
    (letter,) = dead_letters(meters)
    attributes = letter["MessageAttributes"]
    assert attributes["reason"]["StringValue"] == "no meter acme/ref-3 after 5 deliveries"
    assert attributes["sourceMessageId"]["StringValue"] == batches[0].received[0]
    assert queue_is_empty(meters)


def test_a_batch_published_together_applies_in_order_whatever_sqs_delivers_first(meters: Deployment) -> None:
    source = source_of(meters)
    events = [update("ref-4", 2, 5), delete("ref-5", 3), update("ref-4", 1, 3), create("ref-5", 0), create("ref-4", 0)]
    publish_meter_events(meters.resources.event_bus, events)
    batches = source.drain()
    assert [batch.failed for batch in batches] == [[]] * len(batches)
    assert sum(len(batch.received) for batch in batches) == 5
    assert [(m["externalRef"], m["value"]) for m in meters.emulator.meters] == [("ref-4", 5)]
    assert state_of("ref-5").deleted


def test_a_create_the_api_keeps_failing_is_dead_lettered_with_the_apis_answer(meters: Deployment) -> None:
    # Without the handler, the redrive policy would move the record on the sixth receive, without a reason.
    # Only the POST names this user (a failing lookup would be retried by the transport, with real backoff).
    meters.emulator.fail_api_requests_matching("user-503", 503)
    source = source_of(meters)
    publish_meter_events(meters.resources.event_bus, [create("ref-6", 0, user="user-503")])
    assert len(source.drain()) == 5
    (letter,) = dead_letters(meters)
    reason = letter["MessageAttributes"]["reason"]["StringValue"]
    assert "HTTP 503" in reason
    assert reason.endswith("after 5 deliveries")


def test_an_applied_event_whose_state_write_failed_is_applied_again_idempotently(meters: Deployment) -> None:
    failures = {"left": 1}

    def fail_put(**_: Any) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "x"}}, "PutItem")

    # A container whose DynamoDB client fails the next PutItem (an injected client is used as it is, deadline or not).
    dynamodb = boto3.client("dynamodb")
    dynamodb.meta.events.register("before-call.dynamodb.PutItem", fail_put)
    reset_components(dynamodb=dynamodb)
    source = source_of(meters)
    publish_meter_events(meters.resources.event_bus, [create("ref-7", 0)])
    batches = source.drain()
    assert [len(batch.failed) for batch in batches] == [1, 0]
    assert [m["externalRef"] for m in meters.emulator.meters] == ["ref-7"]
    state = state_of("ref-7")
    assert state.created == Position(T0_MS)
    assert state.meter_id == meters.emulator.meters[0]["id"]


# --- the state table itself: leases and conditional writes against DynamoDB ----------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def table(meters: Deployment) -> tuple[MeterStateTable, Clock]:
    clock = Clock()
    return MeterStateTable(boto3.client("dynamodb"), METER_STATE_TABLE, clock=clock, waits=()), clock


def raw_item(pk: str) -> dict[str, Any]:
    response = boto3.client("dynamodb").get_item(TableName=METER_STATE_TABLE, Key={"pk": {"S": pk}})
    return dict(response.get("Item", {}))


def test_a_commit_writes_the_state_with_its_ttl_and_drops_the_lease(table: tuple[MeterStateTable, Clock]) -> None:
    states, clock = table
    key = MeterKey("acme", "t-1")
    written = MeterState(last=Position(T0_MS, 3), created=Position(T0_MS, 1), meter_id="m-1")
    with states.lease(key) as lease:
        assert lease.state == MeterState()
        lease.commit(written, event_id="e-1")
    assert states.read(key) == written
    item = raw_item(key.pk)
    assert "leaseToken" not in item
    assert item["lastEventId"] == {"S": "e-1"}
    assert float(item["expiresAt"]["N"]) == clock.now + STATE_TTL_SECONDS


def test_a_lease_given_up_without_a_commit_leaves_nothing_behind(table: tuple[MeterStateTable, Clock]) -> None:
    states, _ = table
    key = MeterKey("acme", "t-2")
    with pytest.raises(RuntimeError), states.lease(key):
        raise RuntimeError("the API call failed")
    assert raw_item(key.pk) == {}
    with states.lease(key) as lease:
        lease.commit(MeterState(last=Position(T0_MS), deleted=True), event_id=None)
    with states.lease(key):
        pass
    assert "leaseToken" not in raw_item(key.pk)
    assert states.read(key).deleted


def test_a_held_meter_is_refused_until_its_lease_runs_out(table: tuple[MeterStateTable, Clock]) -> None:
    states, clock = table
    key = MeterKey("acme", "t-3")
    with states.lease(key) as first:
        with pytest.raises(RetryableMessageError, match="being changed by another invocation"), states.lease(key):
            pass
        # A holder that died: once its lease ran out another invocation takes the meter over ...
        clock.now += 910 + 11
        with states.lease(key) as second:
            second.commit(MeterState(last=Position(T0_MS + 1)), event_id=None)
        # ... and the late holder's write is refused rather than overwriting what came after it.
        with pytest.raises(RetryableMessageError, match="lease ran out"):
            first.commit(MeterState(last=Position(T0_MS)), event_id=None)
    assert states.read(key).last == Position(T0_MS + 1)


def test_a_waiting_invocation_gets_the_meter_once_the_holder_commits(meters: Deployment) -> None:
    key = MeterKey("acme", "t-4")
    holder_has_it, holder_done = threading.Event(), threading.Event()
    seen: list[MeterState] = []

    def holder() -> None:
        with MeterStateTable(boto3.client("dynamodb"), METER_STATE_TABLE).lease(key) as lease:
            holder_has_it.set()
            holder_done.wait(timeout=30)
            lease.commit(MeterState(last=Position(T0_MS), created=Position(T0_MS), meter_id="m-4"), event_id=None)

    def wait_for_holder(seconds: float) -> None:
        # The waiting invocation's first pause is where the holder finishes: no race on wall-clock time.
        holder_done.set()
        thread.join(timeout=30)

    thread = threading.Thread(target=holder)
    thread.start()
    assert holder_has_it.wait(timeout=30)
    waiting = MeterStateTable(boto3.client("dynamodb"), METER_STATE_TABLE, sleep=wait_for_holder, waits=(0.05,))
    with waiting.lease(key) as lease:
        seen.append(lease.state)
    assert seen == [MeterState(last=Position(T0_MS), created=Position(T0_MS), meter_id="m-4")]


def test_taking_a_lease_is_idempotent_when_the_sdk_resends_it(
    table: tuple[MeterStateTable, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first UpdateItem took the lease but its answer was lost; the resent one carries the same token.
    import uuid

    from usage_engine import meter_state

    states, _ = table
    key = MeterKey("acme", "t-5")
    token = uuid.UUID(int=5)
    with monkeypatch.context() as patch:
        patch.setattr(meter_state.uuid, "uuid4", lambda: token)
        with states.lease(key), states.lease(key) as again:
            again.commit(MeterState(last=Position(T0_MS)), event_id=None)
    with pytest.raises(RetryableMessageError), states.lease(key), states.lease(key):
        pass
