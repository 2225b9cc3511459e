"""What Lambda's SQS event source mapping does, for local runs: receive a batch, invoke the handler with
an SQS event, delete the records that succeeded, leave the failures to be redelivered.

Not emulated: long polling, concurrency scaling, batching windows. Failed records are made visible again
at once (instead of after the visibility timeout) so a local run can show redelivery without waiting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import boto3

from local.lambda_runtime import invoke

REGION = "eu-west-1"


@dataclass
class BatchResult:
    received: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> list[str]:
        return [message_id for message_id in self.received if message_id not in self.failed]


class SqsEventSource:
    def __init__(self, queue_url: str, queue_arn: str, function: str, *, batch_size: int = 10) -> None:
        self._sqs = boto3.client("sqs")
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.function = function
        self.batch_size = batch_size

    def receive(self) -> list[dict[str, Any]]:
        response = self._sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
            WaitTimeSeconds=0,
        )
        return [dict(message) for message in response.get("Messages", [])]

    def deliver(self, messages: list[dict[str, Any]]) -> BatchResult:
        """Invoke the function with these messages as one SQS event and settle each record."""
        result = BatchResult(received=[m["MessageId"] for m in messages])
        if not messages:
            return result
        response = invoke(self.function, {"Records": [self._record(m) for m in messages]})
        result.failed = [item["itemIdentifier"] for item in (response or {}).get("batchItemFailures", [])]
        by_id = {m["MessageId"]: m for m in messages}
        for message_id in result.succeeded:
            self._sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=by_id[message_id]["ReceiptHandle"])
        for message_id in result.failed:
            self._sqs.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=by_id[message_id]["ReceiptHandle"], VisibilityTimeout=0
            )
        return result

    def poll_once(self) -> BatchResult:
        return self.deliver(self.receive())

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
