from __future__ import annotations

import json
from typing import Any

import pytest

from usage_engine.meter_events import (
    CreateMeter,
    DeleteMeter,
    MalformedMessageError,
    MeterRef,
    UpdateMeter,
    parse_meter_event,
)


def body(detail_type: str, detail: Any) -> str:
    return json.dumps({"version": "0", "detail-type": detail_type, "source": "crm", "detail": detail})


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


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "not JSON"),
        ("[]", "JSON object"),
        (body("Rename Meter", CREATE), "detail-type"),
        (json.dumps({"detail-type": "Create Meter"}), "detail must be"),
        (body("Create Meter", {k: v for k, v in CREATE.items() if k != "userId"}), "detail.userId"),
        (body("Create Meter", CREATE | {"domain": "  "}), "detail.domain"),
        (body("Create Meter", CREATE | {"externalRef": "x" * 257}), "longer than 256"),
        (body("Update Meter", {"meterId": "m1"}), "value and/or"),
        (body("Update Meter", {"meterId": "m1", "value": "12"}), "finite number"),
        (body("Update Meter", {"meterId": "m1", "value": True}), "finite number"),
        (body("Update Meter", {"meterId": "m1", "resetAt": 5}), "resetAt"),
        (body("Delete Meter", {"domain": "acme"}), "needs meterId"),
        (body("Delete Meter", {"externalRef": "r1"}), "detail.domain"),
    ],
)
def test_malformed_messages_name_the_problem(raw: str, message: str) -> None:
    with pytest.raises(MalformedMessageError, match=message):
        parse_meter_event(raw)


def test_non_finite_values_are_malformed() -> None:
    raw = '{"detail-type": "Update Meter", "detail": {"meterId": "m1", "value": Infinity}}'
    with pytest.raises(MalformedMessageError, match="finite"):
        parse_meter_event(raw)
