"""What Lambda's SQS event source mapping does, for local runs: receive a batch, invoke the handler with
an SQS event, delete the records that succeeded, leave the failures to be redelivered.

The queue is moto's SQS, so receive counts, in-flight records and the redrive policy (a record received
maxReceiveCount times goes to the dead-letter queue on its next receive) are SQS's own. Two ways to redeliver:

- `redeliver_at_once=True` (the default, for the demo and one-record fault tests): a failed record is made
  visible again at once instead of after the visibility timeout.
- `redeliver_at_once=False`: visibility timeouts as SQS applies them, on the source's virtual clock. A
  received record stays in flight for the queue's VisibilityTimeout; `advance(seconds)` moves the clock and
  makes the records whose timeout ran out visible again (an explicit ChangeMessageVisibility, never a wait).
  `drain()` delivers until the queue is empty, moving the clock to the next timeout whenever nothing is visible.

Not emulated: long polling, concurrency scaling, batching windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import boto3

from local.lambda_runtime import invoke
from local.template import REGION


@dataclass
class BatchResult:
    received: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> list[str]:
        return [message_id for message_id in self.received if message_id not in self.failed]


@dataclass
class _InFlight:
    receipt_handle: str
    visible_at: float  # on the source's virtual clock


class SqsEventSource:
    def __init__(
        self,
        queue_url: str,
        queue_arn: str,
        function: str,
        *,
        batch_size: int = 10,
        redeliver_at_once: bool = True,
    ) -> None:
        self._sqs = boto3.client("sqs")
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.function = function
        self.batch_size = batch_size
        self.redeliver_at_once = redeliver_at_once
        self.now = 0.0
        self._in_flight: dict[str, _InFlight] = {}
        self._visibility_timeout: float | None = None

    @property
    def visibility_timeout(self) -> float:
        """The queue's VisibilityTimeout attribute (seconds), as the event source mapping receives with it."""
        if self._visibility_timeout is None:
            attributes = self._sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["VisibilityTimeout"])
            self._visibility_timeout = float(attributes["Attributes"]["VisibilityTimeout"])
        return self._visibility_timeout

    @property
    def in_flight(self) -> list[str]:
        """Message ids received and neither deleted nor visible again yet."""
        return list(self._in_flight)

    def receive(self) -> list[dict[str, Any]]:
        response = self._sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
            WaitTimeSeconds=0,
        )
        messages: list[dict[str, Any]] = [dict(message) for message in response.get("Messages", [])]
        if not self.redeliver_at_once:
            due = self.now + self.visibility_timeout
            for message in messages:
                self._in_flight[message["MessageId"]] = _InFlight(message["ReceiptHandle"], due)
        return messages

    def deliver(self, messages: list[dict[str, Any]]) -> BatchResult:
        """Invoke the function with these messages as one SQS event and settle each record."""
        result = BatchResult(received=[m["MessageId"] for m in messages])
        if not messages:
            return result
        # A function error (the invocation raised) leaves every record in flight, as in Lambda.
        response = invoke(self.function, {"Records": [self._record(m) for m in messages]})
        result.failed = [item["itemIdentifier"] for item in (response or {}).get("batchItemFailures", [])]
        by_id = {m["MessageId"]: m for m in messages}
        for message_id in result.succeeded:
            self._sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=by_id[message_id]["ReceiptHandle"])
            self._in_flight.pop(message_id, None)
        if self.redeliver_at_once:
            for message_id in result.failed:
                self._make_visible(by_id[message_id]["ReceiptHandle"])
        return result

    def poll_once(self) -> BatchResult:
        return self.deliver(self.receive())

    def advance(self, seconds: float) -> list[str]:
        """Move the virtual clock; the in-flight records whose visibility timeout ran out become visible again
        (SQS moves one that reached maxReceiveCount to the dead-letter queue on its next receive). Returns
        their message ids."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self.now += seconds
        due = [message_id for message_id, flight in self._in_flight.items() if flight.visible_at <= self.now]
        for message_id in due:
            self._make_visible(self._in_flight.pop(message_id).receipt_handle)
        return due

    def advance_to_next_redelivery(self) -> list[str]:
        """Move the clock just as far as the earliest visibility timeout of the records in flight."""
        if not self._in_flight:
            return []
        earliest = min(flight.visible_at for flight in self._in_flight.values())
        return self.advance(max(0.0, earliest - self.now))

    def drain(self, *, max_batches: int = 100) -> list[BatchResult]:
        """Deliver batches until nothing is visible or in flight; a batch that receives nothing moves the clock
        to the next redelivery. Bounded: a queue that never empties fails after `max_batches` batches."""
        if self.redeliver_at_once:
            raise ValueError("drain() follows visibility timeouts: create the source with redeliver_at_once=False")
        results: list[BatchResult] = []
        while len(results) < max_batches:
            messages = self.receive()
            if messages:
                results.append(self.deliver(messages))
                continue
            if not self._in_flight:
                return results
            self.advance_to_next_redelivery()
        raise RuntimeError(f"the queue did not empty within {max_batches} batches")

    def _make_visible(self, receipt_handle: str) -> None:
        self._sqs.change_message_visibility(QueueUrl=self.queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=0)

    def _record(self, message: dict[str, Any]) -> dict[str, Any]:
        attributes = {
            name: {"stringValue": value.get("StringValue"), "dataType": value["DataType"]}
            for name, value in message.get("MessageAttributes", {}).items()
        }
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": message.get("Attributes", {}),
            "messageAttributes": attributes,
            "md5OfBody": message.get("MD5OfBody", ""),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": REGION,
        }
