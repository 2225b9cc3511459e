"""Driving one record through SQS to the meter_events handler, and finding out where it ended up.

The record goes on the real (moto) meter-events queue; the local SQS event source delivers it to the
handler, which reaches the refresher through boto3's lambda.invoke on the local Lambda endpoint.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import boto3
import time_machine

from local import sqs_event_source
from local.lambda_runtime import LocalLambdaContext, invoke, load_event
from local.sqs_event_source import BatchResult, SqsEventSource
from tests.conftest import Deployment
from tests.reliability import matrix
from tests.reliability.harness.context import Ctx, Fate, Observation, snapshot, versions
from usage_engine import MeterEventHandler, RetryableMessageError


def meter_event(detail_type: str, detail: dict[str, Any]) -> str:
    """The body EventBridge puts on the queue for an upstream system's PutEvents."""
    return json.dumps(
        {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": detail_type,
            "source": "billing.crm",
            "account": "123456789012",
            "time": "2026-11-28T12:00:00Z",
            "region": "eu-west-1",
            "resources": [],
            "detail": detail,
        }
    )


def create_meter(ref: str = "ref-1", user: str = "user-1") -> str:
    return meter_event(
        "Create Meter", {"domain": "acme", "externalRef": ref, "meterTypeId": "api-calls", "userId": user}
    )


def spy_on_errors(ctx: Ctx) -> list[str]:
    """Typed errors behind each record's outcome: what escaped MeterEventHandler.handle (the cause of a
    RetryableMessageError) and what was being handled when a record was dead-lettered."""
    seen: list[str] = []
    handle, dead_letter = MeterEventHandler.handle, MeterEventHandler._dead_letter

    def spying_handle(self: MeterEventHandler, body: str, message_id: str) -> Any:
        try:
            return handle(self, body, message_id)
        except Exception as error:
            cause = error.__cause__ if isinstance(error, RetryableMessageError) else None
            seen.append(type(cause or error).__name__)
            raise

    def spying_dead_letter(self: MeterEventHandler, body: str, message_id: str, reason: str) -> Any:
        seen.append(type(sys.exc_info()[1]).__name__)
        return dead_letter(self, body, message_id, reason)

    ctx.monkeypatch.setattr(MeterEventHandler, "handle", spying_handle)
    ctx.monkeypatch.setattr(MeterEventHandler, "_dead_letter", spying_dead_letter)
    return seen


def receive(queue_url: str) -> list[dict[str, Any]]:
    response = boto3.client("sqs").receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=10,
        AttributeNames=["All"],
        MessageAttributeNames=["All"],
        WaitTimeSeconds=0,
    )
    return list(response.get("Messages", []))


def source_of(deployment: Deployment) -> SqsEventSource:
    resources = deployment.resources
    return SqsEventSource(resources.queue_url, resources.queue_arn, "meter_events")


def fate_of(deployment: Deployment, message_id: str, result: BatchResult) -> Fate:
    """Where the record is now. Exactly one of: applied (gone), visible again for SQS to redeliver, or in
    the dead-letter queue with its reason. Anything else is a dropped record and fails here."""
    again = receive(deployment.resources.queue_url)
    dead = receive(deployment.resources.dead_letter_queue_url)
    if message_id in result.failed:
        assert [m["MessageId"] for m in again] == [message_id], "a failed record must be visible again"
        assert again[0]["Attributes"]["ApproximateReceiveCount"] == "2"
        assert dead == []
        return Fate(matrix.RETRY, redelivery=again[0])
    assert again == [], "a settled record must be deleted from the queue"
    if dead:
        (letter,) = dead
        attributes = letter["MessageAttributes"]
        assert attributes["sourceMessageId"]["StringValue"] == message_id
        return Fate(matrix.DLQ, reason=attributes["reason"]["StringValue"])
    return Fate(matrix.APPLIED)


def deliver(ctx: Ctx, body: str) -> Fate:
    """Put `body` on the queue and let the event source deliver it as a one-record batch.

    meter_events answers even when every record of the batch failed (`raise_on_entire_batch_failure=False`):
    the failures are listed in batchItemFailures and the invocation itself succeeds. A handler that raised
    instead would fail this call.
    """
    sqs = boto3.client("sqs")
    message_id = sqs.send_message(QueueUrl=ctx.deployment.resources.queue_url, MessageBody=body)["MessageId"]
    source = source_of(ctx.deployment)
    messages: list[dict[str, Any]] = []
    for _ in range(10):
        messages = source.receive()
        if messages:
            break
    assert [m["MessageId"] for m in messages] == [message_id]
    return fate_of(ctx.deployment, message_id, source.deliver(messages))


def run_consumer(
    ctx: Ctx,
    body: str,
    fault: Callable[[], None] | None = None,
    *,
    seed: bool = True,
    travel: float = 0,
) -> Observation:
    """Seed a good token (unless `seed` is False), inject `fault`, then deliver `body` (`travel` seconds
    later, if given) in a consumer container whose recovery waits are recorded, not slept."""
    ctx.fixture("consumers")
    if seed:
        invoke("token_refresher", load_event("refresher-scheduled.json"))
    ctx.container()
    if fault is not None:
        fault()
    ctx.backoff.clear()
    obs = Observation(before=snapshot(ctx.deployment), versions_before=versions(ctx.deployment))
    obs.errors_seen = spy_on_errors(ctx)
    ctx.output()
    if travel:
        with time_machine.travel(time.time() + travel, tick=True):
            obs.fate = deliver(ctx, body)
    else:
        obs.fate = deliver(ctx, body)
    obs.out = ctx.output()
    obs.after = snapshot(ctx.deployment)
    obs.versions_after = versions(ctx.deployment)
    return obs


def install_container_client(ctx: Ctx, **options: Any) -> None:
    """The consumer container rebuilt with these UsageEngineClient options (shorter timeouts, an
    instrumented session); undone by the `aws` fixture, which starts every test with a new container."""
    ctx.container(client_options=options)


def meters(ctx: Ctx) -> list[str]:
    return sorted(m["externalRef"] for m in ctx.emulator.meters)


def redeliver_after_recovery(ctx: Ctx, obs: Observation) -> None:
    ctx.emulator.clear_api_faults()
    assert obs.fate is not None
    assert obs.fate.redelivery is not None
    assert source_of(ctx.deployment).deliver([obs.fate.redelivery]).failed == []


def deliver_batch(ctx: Ctx, bodies: list[str], *, timeout_seconds: float) -> tuple[BatchResult, LocalLambdaContext]:
    """Put `bodies` on the queue and let the event source deliver them as one batch to a meter_events invocation
    whose context has `timeout_seconds`; the context is returned to say how much of it was left."""
    sqs = boto3.client("sqs")
    sent = {sqs.send_message(QueueUrl=ctx.deployment.resources.queue_url, MessageBody=b)["MessageId"] for b in bodies}
    source = source_of(ctx.deployment)
    messages: list[dict[str, Any]] = []
    for _ in range(10):
        messages += source.receive()
        if len(messages) >= len(bodies):
            break
    assert {m["MessageId"] for m in messages} == sent
    context = LocalLambdaContext(function_name="meter_events", timeout_seconds=timeout_seconds)
    ctx.monkeypatch.setattr(
        sqs_event_source, "invoke", lambda function, event: invoke(function, event, context=context)
    )
    return source.deliver(messages), context


def visible_again(ctx: Ctx) -> list[str]:
    """Message ids visible in the meter-events queue (for SQS to redeliver), all of them."""
    seen: list[str] = []
    for _ in range(10):
        received = receive(ctx.deployment.resources.queue_url)
        if not received:
            break
        seen += [m["MessageId"] for m in received]
    return seen
