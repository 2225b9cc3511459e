"""Per-meter order: the rules of usage_engine.meter_order, and the handler applying any delivery order of a
publisher's events (permuted, duplicated, failing now and then) ends where the publisher's own order ends."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.property.strategies import PROPERTY
from usage_engine.errors import RetryableMessageError, UsageEngineApiError
from usage_engine.meter_events import MeterEventHandler
from usage_engine.meter_order import Change, MeterKey, MeterState, Position, after, verdict
from usage_engine.metering import METERS_PATH, UsageMeteringApi
from usage_engine.states import MessageAction

BASE_URL = "https://api.example.test"
T0 = 1_795_867_200_000  # 2026-11-28T12:00:00Z in epoch milliseconds


# --- fakes: the Usage Engine API behind a UsageEngineClient, the state table, the dead-letter queue ----------------


class FakeResponse:
    def __init__(self, body: Any) -> None:
        self._body = body

    def json(self) -> Any:
        return self._body

    def close(self) -> None:
        pass


class FakeClient:
    """What UsageMeteringApi needs of a UsageEngineClient, over an in-memory meter store."""

    base_url = BASE_URL

    def __init__(self) -> None:
        self.meters: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail_next: list[int | None] = []  # for the next calls, in order: a status to fail with, or None

    def get_json(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def request(self, method: str, path: str, *, json: Any = None, params: Any = None, **_: Any) -> FakeResponse:
        self.calls.append((method, path))
        status = self.fail_next.pop(0) if self.fail_next else None
        if status is not None:
            raise UsageEngineApiError(method, path, status, "injected")
        if path == METERS_PATH and method == "GET":
            found = [m for m in self.meters.values() if all(m.get(k) == v for k, v in (params or {}).items())]
            return FakeResponse({"meters": [dict(m) for m in found]})
        if path == METERS_PATH and method == "POST":
            if any(
                (m["domain"], m["externalRef"]) == (json["domain"], json["externalRef"]) for m in self.meters.values()
            ):
                raise UsageEngineApiError(method, path, 409, "conflict")
            meter = {**json, "id": str(uuid.uuid4()), "value": 0, "resetAt": None}
            self.meters[meter["id"]] = meter
            return FakeResponse(dict(meter))
        meter_id = path.removeprefix(METERS_PATH + "/")
        if meter_id not in self.meters:
            raise UsageEngineApiError(method, path, 404, "not_found")
        if method == "DELETE":
            del self.meters[meter_id]
            return FakeResponse(None)
        if method == "PATCH":
            self.meters[meter_id].update(json)
        return FakeResponse(dict(self.meters[meter_id]))


@dataclass
class FakeLease:
    state: MeterState
    written: MeterState | None = None

    def commit(self, state: MeterState, *, event_id: str | None) -> None:
        assert self.written is None, "a lease is committed once"
        self.written = state


@dataclass
class FakeStates:
    """The state table's contract without DynamoDB: one lease at a time, commits kept."""

    states: dict[str, MeterState] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)
    busy: set[str] = field(default_factory=set)  # keys another invocation holds

    @contextlib.contextmanager
    def lease(self, key: MeterKey) -> Iterator[FakeLease]:
        if key.pk in self.busy:
            raise RetryableMessageError(f"meter {key} is being changed by another invocation")
        assert key.pk not in self.held
        self.held.add(key.pk)
        lease = FakeLease(self.states.get(key.pk, MeterState()))
        try:
            yield lease
        finally:
            self.held.discard(key.pk)
            if lease.written is not None:
                self.states[key.pk] = lease.written


@dataclass
class FakeDeadLetters:
    sent: list[tuple[str, str, str]] = field(default_factory=list)

    def send(self, body: str, *, reason: str, source_message_id: str) -> str:
        self.sent.append((body, reason, source_message_id))
        return f"dlq-{len(self.sent)}"


def make_handler() -> tuple[MeterEventHandler, FakeClient, FakeStates, FakeDeadLetters]:
    client, states, dead = FakeClient(), FakeStates(), FakeDeadLetters()
    return MeterEventHandler(UsageMeteringApi(client), dead, states), client, states, dead  # type: ignore[arg-type]


def event_body(
    detail_type: str, detail: dict[str, Any], *, time: str = "2026-11-28T12:00:00Z", sequence: int | None = None
) -> str:
    detail = {**detail, **({"sequence": sequence} if sequence is not None else {})}
    return json.dumps(
        {"version": "0", "id": str(uuid.uuid4()), "detail-type": detail_type, "time": time, "detail": detail}
    )


# --- the rules -------------------------------------------------------------------------------------------------------

P1, P2, P3 = Position(T0), Position(T0 + 1000), Position(T0 + 2000)
LIVE = MeterState(last=P2, created=P1, meter_id="m-1")
TOMBSTONE = MeterState(last=P2, deleted=True, meter_id="m-1")


@pytest.mark.parametrize(
    ("change", "position", "state", "expected"),
    [
        # Nothing recorded: the API decides.
        (Change.CREATE, P1, MeterState(), None),
        (Change.UPDATE, P1, MeterState(), None),
        (Change.DELETE, P1, MeterState(), None),
        # A tombstone: nothing at or before it applies (Delete wins ties); a later event does.
        (Change.CREATE, P1, TOMBSTONE, MessageAction.SUPERSEDED),
        (Change.CREATE, P2, TOMBSTONE, MessageAction.SUPERSEDED),
        (Change.CREATE, P3, TOMBSTONE, None),
        (Change.UPDATE, P2, TOMBSTONE, MessageAction.SUPERSEDED),
        (Change.UPDATE, P3, TOMBSTONE, None),
        (Change.DELETE, P2, TOMBSTONE, MessageAction.ALREADY_DELETED),
        (Change.DELETE, P3, TOMBSTONE, None),
        # A live meter created at P1, last changed at P2.
        (Change.CREATE, P1, LIVE, MessageAction.ALREADY_EXISTS),
        (Change.CREATE, P2, LIVE, None),
        (Change.UPDATE, P1, LIVE, MessageAction.SUPERSEDED),
        (Change.UPDATE, P2, LIVE, None),
        (Change.DELETE, P1, LIVE, MessageAction.SUPERSEDED),
        (Change.DELETE, P2, LIVE, None),
    ],
)
def test_verdicts(change: Change, position: Position, state: MeterState, expected: MessageAction | None) -> None:
    assert verdict(change, position, state) == expected


def test_positions_compare_by_sequence_when_both_have_one_else_by_time() -> None:
    early_high, late_low = Position(T0, sequence=9), Position(T0 + 5000, sequence=2)
    assert early_high.compare(late_low) == 1
    assert early_high.compare(Position(T0 + 5000)) == -1
    assert Position(T0).compare(Position(T0)) == 0
    assert late_low.later(early_high) == early_high
    assert late_low.later(None) == late_low


def test_states_after_each_change() -> None:
    created = after(Change.CREATE, P1, MeterState(), "m-1")
    assert created == MeterState(last=P1, created=P1, meter_id="m-1")
    updated = after(Change.UPDATE, P3, created, "m-1")
    assert updated == MeterState(last=P3, created=P1, meter_id="m-1")
    # A Create newer than the live meter's own moves its creation, never its last position back.
    assert after(Change.CREATE, P2, updated, "m-1") == MeterState(last=P3, created=P2, meter_id="m-1")
    assert after(Change.DELETE, P2, updated, "m-1") == MeterState(last=P2, deleted=True, meter_id="m-1")
    # An Update that found a meter after a tombstone: live again, creation unknown.
    assert after(Change.UPDATE, P3, TOMBSTONE, "m-2") == MeterState(last=P3, meter_id="m-2")


def test_meter_keys_refuse_identifiers_that_would_make_keys_ambiguous() -> None:
    assert MeterKey("acme", "crm:42@eu").pk == "acme/crm:42@eu"
    with pytest.raises(ValueError, match="externalRef"):
        MeterKey("acme", "a/b")
    with pytest.raises(ValueError, match="domain"):
        MeterKey("ac/me", "b")


# --- any delivery order ends where the publisher's order ends ---------------------------------------------------------


@dataclass(frozen=True)
class Published:
    change: Change
    sequence: int
    value: int = 0


@st.composite
def histories(draw: st.DrawFn) -> list[Published]:
    """What a correct publisher sends for one meter: lives of Create, Updates, Delete (the last may stay open)."""
    events: list[Published] = []
    lives = draw(st.integers(1, 3))
    for life in range(lives):
        events.append(Published(Change.CREATE, len(events) + 1))
        for _ in range(draw(st.integers(0, 3))):
            events.append(Published(Change.UPDATE, len(events) + 1, draw(st.integers(1, 10**6))))
        if life < lives - 1 or draw(st.booleans()):
            events.append(Published(Change.DELETE, len(events) + 1))
    return events


def body_of(event: Published, *, by_time: bool) -> str:
    key = {"domain": "acme", "externalRef": "ref-1"}
    detail = {
        Change.CREATE: {**key, "meterTypeId": "api-calls", "userId": "user-1"},
        Change.UPDATE: {**key, "value": event.value},
        Change.DELETE: key,
    }[event.change]
    detail_type = {Change.CREATE: "Create Meter", Change.UPDATE: "Update Meter", Change.DELETE: "Delete Meter"}
    # One event per second by time, or all in the same second with a sequence: either orders them.
    if by_time:
        return event_body(detail_type[event.change], detail, time=f"2026-11-28T12:00:{event.sequence:02d}Z")
    return event_body(detail_type[event.change], detail, sequence=event.sequence)


@settings(PROPERTY, max_examples=600)
@given(histories(), st.randoms(use_true_random=False), st.booleans(), st.lists(st.booleans(), max_size=40))
def test_any_delivery_order_ends_in_the_publishers_final_state(
    history: list[Published], random: Any, by_time: bool, failures: list[bool]
) -> None:
    handler, client, _, dead = make_handler()
    bodies = [body_of(event, by_time=by_time) for event in history]
    # At least once, in any order: every event once, some twice.
    queue = bodies + [body for body in bodies if random.random() < 0.3]
    random.shuffle(queue)
    for _ in range(20 * len(queue)):
        if not queue:
            break
        body = queue.pop(0)
        if failures and failures.pop(0):
            client.fail_next = [503]
        try:
            handler.handle(body, "message-id")
        except RetryableMessageError:
            queue.insert(random.randrange(len(queue) + 1), body)  # redelivered later, after other events
        client.fail_next = []
    assert queue == [], "an event that a correct publisher sent could never be applied"
    assert dead.sent == []
    meters = list(client.meters.values())
    exists = history[-1].change is not Change.DELETE
    assert len(meters) == (1 if exists else 0)
    last_life = history[max(i for i, e in enumerate(history) if e.change is Change.CREATE) :]
    updates = [e.value for e in last_life if e.change is Change.UPDATE]
    if exists and updates:
        assert meters[0]["value"] == updates[-1]
    elif exists and len(last_life) == len(history):
        assert meters[0]["value"] == 0
