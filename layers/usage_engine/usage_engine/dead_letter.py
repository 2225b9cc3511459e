"""The dead-letter queue for messages that can never succeed, each with the reason it was put there."""

from __future__ import annotations

from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from .errors import DeadLetterError

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

__all__ = ["DeadLetterError", "DeadLetterQueue"]

# SQS message attribute values are limited in total size; a reason is a sentence, not a dump.
MAX_REASON_LENGTH = 1000


class DeadLetterQueue:
    def __init__(self, client: SQSClient, queue_url: str) -> None:
        self._client = client
        self.queue_url = queue_url

    def send(self, body: str, *, reason: str, source_message_id: str) -> str:
        try:
            response = self._client.send_message(
                QueueUrl=self.queue_url,
                MessageBody=body,
                MessageAttributes={
                    "reason": {"DataType": "String", "StringValue": reason[:MAX_REASON_LENGTH] or "unknown"},
                    "sourceMessageId": {"DataType": "String", "StringValue": source_message_id or "unknown"},
                },
            )
        except (ClientError, BotoCoreError) as error:
            raise DeadLetterError(f"sending to the dead-letter queue failed: {type(error).__name__}") from None
        return response["MessageId"]
