"""The meter events' handler and API at edges the order tests do not reach: deferring a message (before and
on its last delivery), and listing meter types."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_meter_order import make_handler
from usage_engine.errors import RetryableMessageError, UsageEngineApiError
from usage_engine.metering import METER_TYPES_PATH, UsageMeteringApi
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
