"""The meter state table under a deadline: a record that failed for want of time fails with its own error, even
when giving the lease back cannot happen any more (the lease then runs out by itself)."""

from __future__ import annotations

from typing import Any

import pytest

from usage_engine.deadline import Deadline, deadline_scope
from usage_engine.errors import DeadlineExceededError, UsageEngineApiError
from usage_engine.meter_order import MeterKey
from usage_engine.meter_state import MeterStateTable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Dynamo:
    """Answers the lease's UpdateItem; counts the calls that reach it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def update_item(self, **_: Any) -> dict[str, Any]:
        self.calls.append("UpdateItem")
        return {"Attributes": {}}

    def delete_item(self, **_: Any) -> dict[str, Any]:
        self.calls.append("DeleteItem")
        return {}

    def get_item(self, **_: Any) -> dict[str, Any]:
        self.calls.append("GetItem")
        return {}

    def put_item(self, **_: Any) -> dict[str, Any]:
        self.calls.append("PutItem")
        return {}


def test_an_error_inside_the_lease_is_not_hidden_by_a_release_that_has_no_time_left() -> None:
    clock = Clock()
    dynamo = Dynamo()
    table = MeterStateTable(dynamo, "meter-state", clock=clock)  # type: ignore[arg-type]
    key = MeterKey("acme", "ref-1")

    def call_the_api_inside_the_lease() -> None:
        with table.lease(key):
            clock.now += 5.0  # the API call inside the lease used up the invocation's time
            raise UsageEngineApiError("GET", "/api/usage-metering/v1/meters", None, "read timeout")

    with (
        deadline_scope(Deadline.after(5.0, clock=clock)),
        pytest.raises(UsageEngineApiError, match="read timeout"),
    ):
        call_the_api_inside_the_lease()
    assert dynamo.calls == ["UpdateItem"]  # no release was attempted without time for it


def test_without_time_to_take_the_lease_nothing_is_called() -> None:
    clock = Clock()
    dynamo = Dynamo()
    table = MeterStateTable(dynamo, "meter-state", clock=clock)  # type: ignore[arg-type]
    with (
        deadline_scope(Deadline.after(0.0, clock=clock)),
        pytest.raises(DeadlineExceededError),
        table.lease(MeterKey("acme", "ref-1")),
    ):
        pass
    assert dynamo.calls == []
