"""sqs_batch: SQS records read leniently, handled in order, and the ones whose handler raised reported back
(ReportBatchItemFailures) so SQS redelivers those alone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from usage_engine.errors import RetryableMessageError
from usage_engine.sqs_batch import SqsRecord, process_records


def record(message_id: str, body: str = "{}", receive_count: str = "1", **overrides: Any) -> dict[str, Any]:
    """An SQS record as Lambda delivers it (the fields the layer reads, and some it does not)."""
    return {
        "messageId": message_id,
        "receiptHandle": f"handle-{message_id}",
        "body": body,
        "attributes": {"ApproximateReceiveCount": receive_count, "SentTimestamp": "1795867200000"},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        **overrides,
    }


class Recorder:
    """A record handler that remembers what it saw and raises for the message ids it is told to."""

    def __init__(self, failing: dict[str, BaseException] | None = None) -> None:
        self.failing = failing or {}
        self.seen: list[SqsRecord] = []

    def __call__(self, item: SqsRecord) -> object:
        self.seen.append(item)
        if item.message_id in self.failing:
            raise self.failing[item.message_id]
        return None

    @property
    def ids(self) -> list[str]:
        return [item.message_id for item in self.seen]


def test_a_full_record() -> None:
    assert SqsRecord.from_event_record(record("m-1", '{"a":1}', "3")) == SqsRecord("m-1", '{"a":1}', 3)


@pytest.mark.parametrize(
    "attributes",
    [
        None,
        {},
        {"SentTimestamp": "1795867200000"},
        ["ApproximateReceiveCount", "4"],
        "ApproximateReceiveCount=4",
    ],
)
def test_missing_or_odd_attributes_count_as_a_first_delivery(attributes: Any) -> None:
    assert SqsRecord.from_event_record(record("m-1", attributes=attributes)).receive_count == 1


def test_a_record_without_attributes_at_all_is_a_first_delivery() -> None:
    raw = record("m-1")
    del raw["attributes"]
    assert SqsRecord.from_event_record(raw).receive_count == 1


@pytest.mark.parametrize("count", ["", "abc", "-1", "1.5", " 2", "2 ", "0x3", "3e0"])
def test_a_receive_count_that_is_not_digits_is_a_first_delivery(count: str) -> None:
    assert SqsRecord.from_event_record(record("m-1", receive_count=count)).receive_count == 1


@pytest.mark.parametrize("count", [3, 3.0, None, ["3"]])
def test_a_receive_count_that_is_not_a_string_is_a_first_delivery(count: Any) -> None:
    # Lambda sends every attribute as a string; anything else is a hand-made event.
    raw = record("m-1")
    raw["attributes"]["ApproximateReceiveCount"] = count
    assert SqsRecord.from_event_record(raw).receive_count == 1


@pytest.mark.parametrize(("count", "parsed"), [("1", 1), ("7", 7), ("0012", 12), ("100000", 100000)])
def test_digit_receive_counts(count: str, parsed: int) -> None:
    assert SqsRecord.from_event_record(record("m-1", receive_count=count)).receive_count == parsed


def test_a_unicode_digit_that_int_refuses_is_a_first_delivery() -> None:
    assert SqsRecord.from_event_record(record("m-1", receive_count="²")).receive_count == 1


@pytest.mark.parametrize("body", [None, 42, {"a": 1}, b"{}"])
def test_a_body_that_is_not_a_string_is_empty(body: Any) -> None:
    assert SqsRecord.from_event_record(record("m-1", body=body)).body == ""


def test_a_missing_body_is_empty() -> None:
    raw = record("m-1")
    del raw["body"]
    assert SqsRecord.from_event_record(raw).body == ""


@pytest.mark.parametrize(("message_id", "parsed"), [(None, ""), ("", ""), (17, "17")])
def test_odd_message_ids(message_id: Any, parsed: str) -> None:
    assert SqsRecord.from_event_record(record("x", messageId=message_id)).message_id == parsed


def test_a_missing_message_id_is_empty() -> None:
    raw = record("m-1")
    del raw["messageId"]
    assert SqsRecord.from_event_record(raw).message_id == ""


def test_every_record_is_handled_in_the_given_order() -> None:
    handler = Recorder()
    ids = ["m-3", "m-1", "m-2", "m-10"]
    assert process_records([record(i, f"body-{i}", "2") for i in ids], handler) == {"batchItemFailures": []}
    assert handler.seen == [SqsRecord(i, f"body-{i}", 2) for i in ids]


def test_an_empty_batch_has_no_failures() -> None:
    handler = Recorder()
    assert process_records([], handler) == {"batchItemFailures": []}
    assert handler.seen == []


def test_records_may_come_from_any_iterable() -> None:
    def records() -> Iterator[dict[str, Any]]:
        yield record("m-1")
        yield record("m-2")

    handler = Recorder({"m-2": ValueError("bad")})
    assert process_records(records(), handler) == {"batchItemFailures": [{"itemIdentifier": "m-2"}]}
    assert handler.ids == ["m-1", "m-2"]


def test_each_raising_record_is_reported_once_with_its_message_id_and_the_others_still_run() -> None:
    handler = Recorder(
        {
            "m-2": RetryableMessageError("HTTP 503"),
            "m-4": ValueError("not JSON"),
            "m-5": RuntimeError("bug"),
        }
    )
    ids = ["m-1", "m-2", "m-3", "m-4", "m-5", "m-6"]
    response = process_records([record(i) for i in ids], handler)
    assert response == {
        "batchItemFailures": [{"itemIdentifier": "m-2"}, {"itemIdentifier": "m-4"}, {"itemIdentifier": "m-5"}]
    }
    assert handler.ids == ids, "a failure does not stop the records after it"


@pytest.mark.parametrize("result", [None, False, 0, "", "done", {"status": "failed"}])
def test_any_normal_return_means_done(result: object) -> None:
    response = process_records([record("m-1"), record("m-2")], lambda _: result)
    assert response == {"batchItemFailures": []}


def test_a_batch_where_every_record_fails_is_still_a_normal_answer() -> None:
    ids = ["m-1", "m-2", "m-3"]
    handler = Recorder({i: RetryableMessageError(i) for i in ids})
    assert process_records([record(i) for i in ids], handler) == {
        "batchItemFailures": [{"itemIdentifier": i} for i in ids]
    }
    assert handler.ids == ids


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), SystemExit(1), GeneratorExit()])
def test_a_base_exception_is_not_swallowed_and_ends_the_batch(interrupt: BaseException) -> None:
    # Only an Exception marks a record failed: an interrupt or an exit is not one record's failure, and
    # answering as if the batch was handled would hide it.
    handler = Recorder({"m-1": ValueError("bad"), "m-2": interrupt})
    with pytest.raises(type(interrupt)):
        process_records([record("m-1"), record("m-2"), record("m-3")], handler)
    assert handler.ids == ["m-1", "m-2"]


def test_the_response_is_a_fresh_list_each_time() -> None:
    first = process_records([record("m-1")], Recorder({"m-1": ValueError()}))
    second = process_records([record("m-2")], Recorder())
    assert first["batchItemFailures"] == [{"itemIdentifier": "m-1"}]
    assert second["batchItemFailures"] == []
