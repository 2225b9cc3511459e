from __future__ import annotations

import json
from typing import Any

import pytest

from usage_engine.errors import ConfigurationError
from usage_engine.meter_events import (
    CreateMeter,
    DeleteMeter,
    MalformedMessageError,
    MeterEvent,
    MeterRef,
    UpdateMeter,
    max_receive_count_from_env,
    parse_meter_event,
    read_meter_event,
    sorted_records,
)
from usage_engine.meter_order import MeterKey, Position

TIME = "2026-11-28T12:00:00Z"
T0 = 1_795_867_200_000


def body(detail_type: str, detail: Any, **envelope: Any) -> str:
    return json.dumps({"version": "0", "detail-type": detail_type, "source": "crm", "detail": detail, **envelope})


CREATE = {"domain": "acme", "externalRef": "r1", "meterTypeId": "api-calls", "userId": "u1"}


def test_create() -> None:
    assert parse_meter_event(body("Create Meter", CREATE)) == CreateMeter("acme", "r1", "api-calls", "u1")


def test_update_by_id_and_by_external_ref() -> None:
    assert parse_meter_event(body("Update Meter", {"meterId": "m1", "value": 3.5})) == UpdateMeter(
        MeterRef(meter_id="m1"), {"value": 3.5}
    )
    assert parse_meter_event(
        body("Update Meter", {"domain": "acme", "externalRef": "r1", "resetAt": None})
    ) == UpdateMeter(MeterRef(domain="acme", external_ref="r1"), {"reset_at": None})


def test_delete() -> None:
    assert parse_meter_event(body("Delete Meter", {"meterId": "m1"})) == DeleteMeter(MeterRef(meter_id="m1"))


def test_identifiers_of_every_alphabet_are_accepted() -> None:
    detail = {"domain": "acme.eu", "externalRef": "crm:acct-42@eu_1~x", "meterTypeId": "api.calls", "userId": "a+b@c:d"}
    assert parse_meter_event(body("Create Meter", detail)) == CreateMeter(
        "acme.eu", "crm:acct-42@eu_1~x", "api.calls", "a+b@c:d"
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "not JSON"),
        ("[]", "JSON object"),
        (body("Rename Meter", CREATE), "detail-type"),
        (json.dumps({"detail-type": "Create Meter"}), "detail must be"),
        (body("Create Meter", {k: v for k, v in CREATE.items() if k != "userId"}), "detail.userId"),
        (body("Create Meter", CREATE | {"domain": "  "}), "detail.domain must be a non-empty string"),
        (body("Create Meter", CREATE | {"domain": "a b"}), "detail.domain must be 1-128 characters of letters"),
        (body("Create Meter", CREATE | {"externalRef": "x" * 257}), "detail.externalRef is longer than 256"),
        (body("Create Meter", CREATE | {"meterTypeId": 7}), "detail.meterTypeId must be a non-empty string"),
        (body("Create Meter", CREATE | {"userId": "a b"}), "detail.userId must be"),
        (body("Create Meter", CREATE | {"domain": "a/b"}), "detail.domain must be"),
        (body("Create Meter", CREATE | {"externalRef": ".."}), "detail.externalRef must be"),
        (body("Update Meter", {"meterId": "m1"}), "value and/or"),
        (body("Update Meter", {"meterId": "m1", "value": "12"}), "finite number"),
        (body("Update Meter", {"meterId": "m1", "value": True}), "finite number"),
        (body("Update Meter", {"meterId": "m1", "resetAt": 5}), "resetAt"),
        (body("Update Meter", {"meterId": "..", "value": 1}), "detail.meterId must be"),
        (body("Delete Meter", {"meterId": "."}), "detail.meterId must be"),
        (body("Delete Meter", {"meterId": "a/../b"}), "detail.meterId must be"),
        (body("Delete Meter", {"meterId": "%2e%2e"}), "detail.meterId must be"),
        (body("Delete Meter", {"meterId": "x" * 129}), "detail.meterId is longer than 128"),
        (body("Delete Meter", {"domain": "acme"}), "needs meterId"),
        (body("Delete Meter", {"externalRef": "r1"}), "detail.domain"),
    ],
)
def test_malformed_messages_name_the_problem(raw: str, message: str) -> None:
    with pytest.raises(MalformedMessageError, match=message):
        parse_meter_event(raw)


def test_identifier_errors_never_echo_the_value() -> None:
    with pytest.raises(MalformedMessageError) as error:
        parse_meter_event(body("Delete Meter", {"meterId": "hostile<script>"}))
    assert "hostile" not in str(error.value)


def test_non_finite_values_are_malformed() -> None:
    raw = '{"detail-type": "Update Meter", "detail": {"meterId": "m1", "value": Infinity}}'
    with pytest.raises(MalformedMessageError, match="finite"):
        parse_meter_event(raw)


# --- the position: the event's time and the publisher's sequence -------------------------------------------------


def test_read_gives_the_position_and_the_event_id() -> None:
    event = read_meter_event(body("Create Meter", CREATE | {"sequence": 7}, time=TIME, id="e-1"))
    assert event == MeterEvent(CreateMeter("acme", "r1", "api-calls", "u1"), Position(T0, 7), "e-1")
    assert event.key == MeterKey("acme", "r1")


def test_time_zones_and_fractions_are_read_as_utc_milliseconds() -> None:
    event = read_meter_event(body("Create Meter", CREATE, time="2026-11-28T13:00:00.250+01:00"))
    assert event.position == Position(T0 + 250)


def test_events_by_meter_id_need_no_time() -> None:
    event = read_meter_event(body("Delete Meter", {"meterId": "m1"}))
    assert (event.key, event.position) == (None, None)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (body("Create Meter", CREATE), "time must be the event's timestamp"),
        (body("Update Meter", {"domain": "acme", "externalRef": "r1", "value": 1}), "time must be"),
        (body("Create Meter", CREATE, time="yesterday"), "time must be an ISO 8601 timestamp"),
        (body("Create Meter", CREATE, time="2026-11-28T12:00:00"), "with a time zone"),
        (body("Create Meter", CREATE, time=1795867200), "time must be an ISO 8601"),
        (body("Create Meter", CREATE | {"sequence": -1}, time=TIME), "detail.sequence"),
        (body("Create Meter", CREATE | {"sequence": True}, time=TIME), "detail.sequence"),
        (body("Create Meter", CREATE | {"sequence": "3"}, time=TIME), "detail.sequence"),
        (body("Create Meter", CREATE | {"sequence": 2**63}, time=TIME), "detail.sequence"),
    ],
)
def test_positions_that_cannot_order_a_meter_are_malformed(raw: str, message: str) -> None:
    with pytest.raises(MalformedMessageError, match=message):
        read_meter_event(raw)


def record(raw: str, message_id: str) -> dict[str, Any]:
    return {"messageId": message_id, "body": raw}


def test_a_batch_is_sorted_meter_by_meter_in_publishing_order() -> None:
    update = body("Update Meter", {"domain": "acme", "externalRef": "r1", "value": 1}, time=TIME)
    delete = body("Delete Meter", {"domain": "acme", "externalRef": "r1"}, time="2026-11-28T12:00:05Z")
    create = body("Create Meter", CREATE, time=TIME)
    other = body("Create Meter", CREATE | {"externalRef": "r0"}, time="2026-11-28T12:00:09Z")
    by_id = body("Delete Meter", {"meterId": "m1"})
    batch = [
        record(delete, "delete"),
        record(update, "update"),
        record("garbage", "bad"),
        record(create, "create"),
        record(other, "other"),
        record(by_id, "by-id"),
    ]
    ordered = [r["messageId"] for r in sorted_records(batch)]
    # Meter-id events, then meter by meter (at one time, Create before Update), unreadable last.
    assert ordered == ["by-id", "other", "create", "update", "delete", "bad"]


def test_sequenced_events_sort_by_sequence_whatever_their_time() -> None:
    late_first = body("Create Meter", CREATE | {"sequence": 1}, time="2026-11-28T12:00:09Z")
    early_second = body("Update Meter", {"domain": "acme", "externalRef": "r1", "value": 2, "sequence": 2}, time=TIME)
    ordered = sorted_records([record(early_second, "second"), record(late_first, "first")])
    assert [r["messageId"] for r in ordered] == ["first", "second"]


def test_max_receive_count_setting() -> None:
    assert max_receive_count_from_env({}) == 5
    assert max_receive_count_from_env({"MAX_RECEIVE_COUNT": "3"}) == 3
    for bad in ("0", "abc", "-1", "1001"):
        with pytest.raises(ConfigurationError, match="MAX_RECEIVE_COUNT"):
            max_receive_count_from_env({"MAX_RECEIVE_COUNT": bad})
