"""SQS partial batch responses (`ReportBatchItemFailures`): each record handled on its own, the failed ones
reported back so SQS redelivers only those.

The contract is small: a record's handler returns normally (the record is done) or raises (SQS redelivers
it); the answer lists the message ids that raised. Powertools' batch utility implements the same contract
but imports every event source's data classes (about 20 ms of a cold start with bytecode, more without;
benchmarks/RESULTS.md, section 4), so the layer implements it for SQS here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict


class BatchItemFailure(TypedDict):
    itemIdentifier: str


class PartialBatchResponse(TypedDict):
    batchItemFailures: list[BatchItemFailure]


@dataclass(frozen=True)
class SqsRecord:
    """What a record handler needs of one SQS record."""

    message_id: str
    body: str
    receive_count: int

    @classmethod
    def from_event_record(cls, record: Mapping[str, Any]) -> SqsRecord:
        attributes = record.get("attributes")
        raw_count = attributes.get("ApproximateReceiveCount") if isinstance(attributes, Mapping) else None
        # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
        counted = isinstance(raw_count, str) and raw_count.isascii() and raw_count.isdigit()
        body = record.get("body")
        return cls(
            message_id=str(record.get("messageId") or ""),
            body=body if isinstance(body, str) else "",
            # Lambda always sends it; a hand-made event without it is treated as a first delivery.
            receive_count=int(raw_count) if counted and isinstance(raw_count, str) else 1,
        )


def process_records(
    records: Iterable[Mapping[str, Any]], handle: Callable[[SqsRecord], object]
) -> PartialBatchResponse:
    """Handle every record in order; report each one whose handler raised.

    A batch whose every record failed is still a normal answer (all listed, all redelivered), not a function
    error: an error would redeliver the records that succeeded too and count as an Errors alarm datapoint.
    """
    failures: list[BatchItemFailure] = []
    for raw in records:
        record = SqsRecord.from_event_record(raw)
        try:
            handle(record)
        except Exception:  # noqa: BLE001 - the handler reports why; a failed record is redelivered, never lost
            failures.append({"itemIdentifier": record.message_id})
    return {"batchItemFailures": failures}
