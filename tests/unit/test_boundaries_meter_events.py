"""The meter events' handler and API at edges the order tests do not reach: deferring a message (before and
on its last delivery), and listing meter types."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_meter_order import event_body, make_handler
from usage_engine.errors import ConfigurationError, RetryableMessageError, UsageEngineApiError
from usage_engine.meter_events import DEFAULT_MAX_RECEIVE_COUNT, max_receive_count_from_env, sorted_records
from usage_engine.metering import METER_TYPES_PATH, METERS_PATH, UsageMeteringApi
from usage_engine.states import MessageAction


@pytest.mark.parametrize(("receive_count", "max_receive_count"), [(1, 3), (2, 3)])
def test_a_deferred_message_before_its_last_delivery_is_retried(receive_count: int, max_receive_count: int) -> None:
    handler, client, _, dead = make_handler()
    with pytest.raises(RetryableMessageError) as caught:
        handler.defer(
            "{}", "m-1", reason="too little time left", receive_count=receive_count, max_receive_count=max_receive_count
        )
    assert str(caught.value) == "too little time left"
    assert (dead.sent, client.calls) == ([], [])


@pytest.mark.parametrize("receive_count", [3, 4])
def test_a_deferred_message_on_its_last_delivery_is_dead_lettered_with_the_reason(receive_count: int) -> None:
    handler, client, _, dead = make_handler()
    outcome = handler.defer(
        "{}", "m-1", reason="too little time left", receive_count=receive_count, max_receive_count=3
    )
    reason = f"too little time left on delivery {receive_count}"
    assert (outcome.action, outcome.reason) == (MessageAction.DEAD_LETTERED, reason)
    assert dead.sent == [("{}", reason, "m-1")]
    assert client.calls == []


class TypesClient:
    base_url = "https://api.example.test"

    def __init__(self, body: Any) -> None:
        self.body = body
        self.paths: list[str] = []

    def get_json(self, path: str, **_: Any) -> Any:
        self.paths.append(path)
        return self.body


def test_meter_types_are_listed_from_their_path() -> None:
    client = TypesClient({"meterTypes": [{"id": "api-calls"}, {"id": "storage"}]})
    assert UsageMeteringApi(client).list_meter_types() == [{"id": "api-calls"}, {"id": "storage"}]  # type: ignore[arg-type]
    assert client.paths == [METER_TYPES_PATH]


@pytest.mark.parametrize("body", [{"meterTypes": "x"}, {"meterTypes": [1]}, [], {"other": []}])
def test_a_meter_types_answer_of_another_shape_is_an_api_error(body: Any) -> None:
    with pytest.raises(UsageEngineApiError) as caught:
        UsageMeteringApi(TypesClient(body)).list_meter_types()  # type: ignore[arg-type]
    assert (caught.value.method, caught.value.path, caught.value.status) == ("GET", METER_TYPES_PATH, 200)
    assert caught.value.reason == "the answer has no list 'meterTypes'"


# --- a batch's order -------------------------------------------------------------------------------------------

T0 = 1_795_867_200_000


def record(body: str, message_id: str) -> dict[str, Any]:
    return {"body": body, "messageId": message_id}


def test_a_batch_is_ordered_by_id_events_first_then_meter_by_meter_then_unreadable_ones() -> None:
    key_a = {"domain": "acme", "externalRef": "a"}
    key_b = {"domain": "acme", "externalRef": "b"}
    create = {"meterTypeId": "api-calls", "userId": "u-1"}
    batch = [
        record("not json", "unreadable"),
        record(event_body("Update Meter", {**key_b, "value": 1}, time="2026-11-28T12:00:01Z"), "b-timed-late"),
        record(event_body("Update Meter", {**key_b, "value": 1}, time="2026-11-28T12:00:00Z"), "b-timed-early"),
        # Sequenced before timed, whatever the numbers: each kind compares only with its own.
        record(event_body("Update Meter", {**key_b, "value": 2}, sequence=10**15), "b-sequenced"),
        record(event_body("Delete Meter", key_a, sequence=3), "a-delete"),
        record(event_body("Update Meter", {**key_a, "value": 1}, sequence=3), "a-update"),
        record(event_body("Create Meter", {**key_a, **create}, sequence=3), "a-create"),
        record(event_body("Update Meter", {"meterId": "m-9", "value": 1}), "by-id"),
    ]
    assert [r["messageId"] for r in sorted_records(batch)] == [
        "by-id",
        "a-create",
        "a-update",
        "a-delete",
        "b-sequenced",
        "b-timed-early",
        "b-timed-late",
        "unreadable",
    ]


# --- MAX_RECEIVE_COUNT -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "count"), [("1", 1), ("1000", 1000), (" 7 ", 7), ("", DEFAULT_MAX_RECEIVE_COUNT)])
def test_max_receive_count_is_sqss_range(raw: str, count: int) -> None:
    assert max_receive_count_from_env({"MAX_RECEIVE_COUNT": raw}) == count


@pytest.mark.parametrize("raw", ["0", "1001", "-1", "3.0", "three"])
def test_max_receive_count_outside_sqss_range_is_refused(raw: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        max_receive_count_from_env({"MAX_RECEIVE_COUNT": raw})
    assert caught.value.variable == "MAX_RECEIVE_COUNT"
    assert str(caught.value).endswith("must be an integer from 1 to 1000 (SQS's range)")


def test_max_receive_count_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_RECEIVE_COUNT", "9")
    assert max_receive_count_from_env() == 9
    monkeypatch.delenv("MAX_RECEIVE_COUNT")
    assert max_receive_count_from_env() == DEFAULT_MAX_RECEIVE_COUNT


# --- deliveries ------------------------------------------------------------------------------------------------


def test_an_update_by_meter_id_reports_the_meter() -> None:
    handler, client, _, _ = make_handler()
    client.meters["m-9"] = {"id": "m-9", "value": 0}
    outcome = handler.handle(event_body("Update Meter", {"meterId": "m-9", "value": 4}), "msg-1")
    assert (outcome.action, outcome.meter_id) == (MessageAction.UPDATED, "m-9")
    assert client.meters["m-9"]["value"] == 4


def test_a_dead_letter_carries_the_message_as_it_came_and_its_id() -> None:
    handler, _, _, dead = make_handler()
    outcome = handler.handle_delivery("not json", "msg-7", receive_count=1)
    assert outcome.dead_lettered
    ((body, reason, source),) = dead.sent
    assert (body, source, reason) == ("not json", "msg-7", outcome.reason)


def test_a_retryable_failure_on_the_last_delivery_is_dead_lettered_with_the_message() -> None:
    handler, client, _, dead = make_handler()
    body = event_body("Update Meter", {"meterId": "m-9", "value": 4})
    client.fail_next = [503]
    with pytest.raises(RetryableMessageError):
        handler.handle_delivery(body, "msg-8", receive_count=2, max_receive_count=3)
    client.fail_next = [503]
    outcome = handler.handle_delivery(body, "msg-8", receive_count=3, max_receive_count=3)
    assert outcome.dead_lettered
    assert dead.sent == [(body, outcome.reason, "msg-8")]
    assert outcome.reason is not None
    assert outcome.reason.endswith("after 3 deliveries")


def test_a_meter_answer_that_is_not_an_object_names_the_meters_path() -> None:
    class Client(TypesClient):
        pass

    api = UsageMeteringApi(Client([]))  # type: ignore[arg-type]
    with pytest.raises(UsageEngineApiError) as caught:
        api.get_meter("m-1")
    assert caught.value.path == METERS_PATH + "/m-1"
    assert caught.value.reason == "the answer is not a JSON object"
