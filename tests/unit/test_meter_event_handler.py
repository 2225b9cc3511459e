"""MeterEventHandler over fakes: the order rules applied to the observed failures, hostile identifiers dead-lettered
before any request, and the last delivery dead-lettered with its reason."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_meter_order import FakeClient, event_body, make_handler
from usage_engine.errors import RetryableMessageError
from usage_engine.identifiers import InvalidIdentifierError
from usage_engine.meter_order import MeterState, Position
from usage_engine.metering import METERS_PATH
from usage_engine.states import MessageAction

KEY = {"domain": "acme", "externalRef": "ref-1"}
CREATE = {**KEY, "meterTypeId": "api-calls", "userId": "user-1"}
T0 = 1_795_867_200_000


def at(second: int) -> str:
    return f"2026-11-28T12:00:{second:02d}Z"


def create(second: int = 0) -> str:
    return event_body("Create Meter", CREATE, time=at(second))


def update(second: int, value: int = 7) -> str:
    return event_body("Update Meter", {**KEY, "value": value}, time=at(second))


def delete(second: int) -> str:
    return event_body("Delete Meter", KEY, time=at(second))


def test_a_create_retried_after_its_delete_was_applied_is_superseded() -> None:
    handler, client, states, _ = make_handler()
    client.fail_next = [503]
    with pytest.raises(RetryableMessageError, match="503"):
        handler.handle(create(0), "m-create")
    assert handler.handle(delete(5), "m-delete").action == MessageAction.ALREADY_DELETED
    calls = len(client.calls)

    assert handler.handle(create(0), "m-create").action == MessageAction.SUPERSEDED
    assert client.meters == {}
    assert len(client.calls) == calls, "a superseded event calls no API"
    assert states.states["acme/ref-1"] == MeterState(last=Position(T0 + 5000), deleted=True)


def test_an_update_before_its_create_is_retried_then_applied() -> None:
    handler, client, _, dead = make_handler()
    with pytest.raises(RetryableMessageError, match="no meter acme/ref-1"):
        handler.handle(update(3, value=42), "m-update")
    assert handler.handle(create(0), "m-create").action == MessageAction.CREATED
    assert handler.handle(update(3, value=42), "m-update").action == MessageAction.UPDATED
    assert [m["value"] for m in client.meters.values()] == [42]
    assert dead.sent == []


def test_on_the_last_delivery_a_retryable_failure_is_dead_lettered_with_its_reason() -> None:
    handler, _, _, dead = make_handler()
    for count in range(1, 5):
        with pytest.raises(RetryableMessageError):
            handler.handle_delivery(update(3), "m-update", receive_count=count, max_receive_count=5)
    outcome = handler.handle_delivery(update(3), "m-update", receive_count=5, max_receive_count=5)
    assert outcome.action == MessageAction.DEAD_LETTERED
    assert outcome.reason == "no meter acme/ref-1 after 5 deliveries"
    assert [(reason, source) for _, reason, source in dead.sent] == [(outcome.reason, "m-update")]


def test_an_update_older_than_the_last_applied_one_is_superseded() -> None:
    handler, client, _, _ = make_handler()
    handler.handle(create(0), "c")
    handler.handle(update(9, value=9), "late")
    assert handler.handle(update(4, value=4), "early").action == MessageAction.SUPERSEDED
    assert [m["value"] for m in client.meters.values()] == [9]


def test_a_repeated_create_is_already_done_without_a_request() -> None:
    handler, client, _, _ = make_handler()
    first = handler.handle(create(0), "c")
    calls = len(client.calls)
    again = handler.handle(create(0), "c")
    assert (again.action, again.meter_id) == (MessageAction.ALREADY_EXISTS, first.meter_id)
    assert len(client.calls) == calls


def test_a_create_after_a_tombstone_makes_the_meter_again() -> None:
    handler, client, _, _ = make_handler()
    handler.handle(create(0), "c1")
    assert handler.handle(delete(1), "d").action == MessageAction.DELETED
    assert handler.handle(delete(1), "d").action == MessageAction.ALREADY_DELETED
    assert handler.handle(create(2), "c2").action == MessageAction.CREATED
    assert len(client.meters) == 1


def test_failures_that_are_retried_write_no_state() -> None:
    handler, client, states, _ = make_handler()
    client.fail_next = [429]
    with pytest.raises(RetryableMessageError):
        handler.handle(create(0), "c")
    assert states.states == {}
    assert states.held == set()


def test_a_request_the_api_refuses_is_dead_lettered_and_writes_no_state() -> None:
    handler, client, states, dead = make_handler()
    client.fail_next = [None, 400]  # the lookup finds nothing, the POST is refused
    outcome = handler.handle(create(0), "c")
    assert outcome.action == MessageAction.DEAD_LETTERED
    assert "POST" in (outcome.reason or "")
    assert "HTTP 400" in (outcome.reason or "")
    assert states.states == {}
    assert len(dead.sent) == 1


def test_a_meter_held_by_another_invocation_is_retried() -> None:
    handler, client, states, _ = make_handler()
    states.busy.add("acme/ref-1")
    with pytest.raises(RetryableMessageError, match="being changed by another invocation"):
        handler.handle(create(0), "c")
    assert client.calls == []
    outcome = handler.handle_delivery(create(0), "c", receive_count=5, max_receive_count=5)
    assert outcome.reason == "meter acme/ref-1 is being changed by another invocation after 5 deliveries"


# --- meter ids: unordered, and never a request to another resource --------------------------------------------------


@pytest.mark.parametrize(
    ("detail_type", "detail"),
    [
        ("Update Meter", {"meterId": "..", "value": 1}),
        ("Update Meter", {"meterId": ".", "value": 1}),
        ("Delete Meter", {"meterId": "."}),
        ("Delete Meter", {"meterId": ".."}),
        ("Delete Meter", {"meterId": "../meter-types"}),
        ("Delete Meter", {"meterId": "m1?x=1"}),
        ("Delete Meter", {"meterId": "m1#frag"}),
    ],
)
def test_hostile_meter_ids_are_dead_lettered_before_any_request(detail_type: str, detail: dict[str, Any]) -> None:
    handler, client, _, dead = make_handler()
    outcome = handler.handle(event_body(detail_type, detail), "hostile")
    assert outcome.action == MessageAction.DEAD_LETTERED
    assert "detail.meterId" in (outcome.reason or "")
    assert client.calls == []
    assert len(dead.sent) == 1


def test_a_meter_id_the_api_returns_is_checked_too() -> None:
    handler, client, _, _ = make_handler()
    client.meters[".."] = {"id": "..", **CREATE, "value": 0}
    outcome = handler.handle(delete(3), "d")
    assert outcome.action == MessageAction.DEAD_LETTERED
    assert "meterId" in (outcome.reason or "")
    assert [method for method, _ in client.calls] == ["GET"]


def test_events_by_meter_id_apply_as_they_arrive() -> None:
    handler, client, states, dead = make_handler()
    meter_id = handler.handle(create(0), "c").meter_id
    assert meter_id is not None
    by_id = event_body("Update Meter", {"meterId": meter_id, "value": 5})
    assert handler.handle(by_id, "u").action == MessageAction.UPDATED
    assert ("PATCH", f"{METERS_PATH}/{meter_id}") in client.calls
    delete_by_id = event_body("Delete Meter", {"meterId": meter_id})
    assert handler.handle(delete_by_id, "d").action == MessageAction.DELETED
    assert handler.handle(delete_by_id, "d").action == MessageAction.ALREADY_DELETED
    # An update of a meter that no longer exists can never apply: dead-lettered with the API's answer.
    outcome = handler.handle(by_id, "u2")
    assert outcome.action == MessageAction.DEAD_LETTERED
    assert "HTTP 404" in (outcome.reason or "")
    # The repeated Create of that meter is already done: its state says so, whatever happened by id.
    assert handler.handle(create(0), "c").action == MessageAction.ALREADY_EXISTS
    assert client.meters == {}
    assert len(dead.sent) == 1
    assert states.held == set()


@pytest.mark.parametrize("meter_id", [".", "..", "%2e"])
@pytest.mark.parametrize("base_url", ["https://api.example.test", "https://api.example.test/prefix"])
def test_the_second_fence_refuses_any_path_that_is_not_the_meters_own(
    meter_id: str, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if the identifier check let anything through: the final URL check alone keeps the request home.
    from usage_engine import metering

    monkeypatch.setattr(metering, "check_identifier", lambda rule, value: value)
    client = FakeClient()
    client.base_url = base_url
    api = metering.UsageMeteringApi(client)  # type: ignore[arg-type]
    if meter_id == "%2e":
        # quote() encodes "%", so this one is a segment of its own that decodes back: allowed by the fence.
        assert api.delete_meter(meter_id) is False
        assert client.calls == [("DELETE", f"{METERS_PATH}/%252e")]
        return
    for call in (lambda: api.delete_meter(meter_id), lambda: api.update_meter(meter_id, value=1)):
        with pytest.raises(InvalidIdentifierError, match=r"^meterId would send the request to another resource"):
            call()
    assert client.calls == []
