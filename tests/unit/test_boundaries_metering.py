"""The meter events' parser and the metering API at their edges: every parser message, the limits of sequence,
time, value and event id, what the handler reports and commits per change, and the exact requests and answers
of UsageMeteringApi over a recording client."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.unit.test_meter_order import FakeDeadLetters, event_body
from usage_engine.errors import MalformedMessageError, RetryableMessageError, UsageEngineApiError
from usage_engine.meter_events import (
    _MAX_TIME_LENGTH,
    DETAIL_TYPES,
    MAX_SEQUENCE,
    MeterEventHandler,
    read_meter_event,
)
from usage_engine.meter_order import MeterKey, MeterState
from usage_engine.metering import METERS_PATH, UsageMeteringApi
from usage_engine.states import MessageAction

KEY = {"domain": "acme", "externalRef": "ref-1"}
CREATE = {**KEY, "meterTypeId": "api-calls", "userId": "user-1"}
TIME = "2026-11-28T12:00:00Z"
T0 = 1_795_867_200_000


def malformed(body: str) -> str:
    with pytest.raises(MalformedMessageError) as caught:
        read_meter_event(body)
    return str(caught.value)


def raw(event: dict[str, Any]) -> str:
    return json.dumps({"version": "0", "id": "e-1", **event})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{", "body is not JSON"),
        ("[1]", "body is not a JSON object"),
        (raw({"detail-type": "Rename Meter", "detail": {}}), f"detail-type must be one of {', '.join(DETAIL_TYPES)}"),
        (raw({"detail-type": "Update Meter", "detail": []}), "detail must be a JSON object"),
        (
            raw({"detail-type": "Update Meter", "time": TIME, "detail": {**KEY, "value": "7"}}),
            "detail.value must be a finite number",
        ),
        (
            raw({"detail-type": "Update Meter", "time": TIME, "detail": {**KEY, "value": 10**400}}),
            "detail.value must be a finite number",
        ),
        (
            raw({"detail-type": "Update Meter", "time": TIME, "detail": {**KEY, "resetAt": " "}}),
            "detail.resetAt must be a timestamp string or null",
        ),
        (
            raw({"detail-type": "Update Meter", "time": TIME, "detail": KEY}),
            "Update Meter needs detail.value and/or detail.resetAt",
        ),
        (
            raw({"detail-type": "Delete Meter", "time": TIME, "detail": {"domain": "acme"}}),
            "detail needs meterId, or domain and externalRef",
        ),
        (
            raw({"detail-type": "Delete Meter", "detail": KEY}),
            "time must be the event's timestamp (EventBridge sets it): it orders the meter",
        ),
        (
            raw({"detail-type": "Delete Meter", "time": TIME, "detail": {**KEY, "sequence": -1}}),
            "detail.sequence must be an integer from 0 to 2^63-1",
        ),
        (
            raw({"detail-type": "Delete Meter", "time": TIME, "detail": {**KEY, "sequence": MAX_SEQUENCE + 1}}),
            "detail.sequence must be an integer from 0 to 2^63-1",
        ),
        (
            raw({"detail-type": "Delete Meter", "time": "2026-11-28T12:00:00", "detail": KEY}),
            "time must be an ISO 8601 timestamp with a time zone, e.g. 2026-11-28T12:00:00Z",
        ),
        (
            raw({"detail-type": "Delete Meter", "time": TIME + " " * 21, "detail": KEY}),
            "time must be an ISO 8601 timestamp with a time zone, e.g. 2026-11-28T12:00:00Z",
        ),
    ],
)
def test_every_parser_problem_says_what_is_wrong(body: str, message: str) -> None:
    assert malformed(body) == message


@pytest.mark.parametrize("sequence", [0, MAX_SEQUENCE])
def test_a_sequence_from_zero_to_its_maximum_is_kept(sequence: int) -> None:
    event = read_meter_event(event_body("Delete Meter", KEY, sequence=sequence))
    assert event.position is not None
    assert event.position.sequence == sequence


@pytest.mark.parametrize(
    ("time", "ms"),
    [
        ("2026-11-28T12:00:00Z", T0),
        ("2026-11-28T12:00:00z", T0),
        ("2026-11-28T13:00:00+01:00", T0),
        ("2026-11-28T12:00:00.0015Z", T0 + 1),  # whole milliseconds, rounded down
        ("2026-11-28T12:00:00.000000+00:00" + "", T0),
    ],
)
def test_time_is_read_as_whole_epoch_milliseconds(time: str, ms: int) -> None:
    event = read_meter_event(event_body("Delete Meter", KEY, time=time))
    assert event.position is not None
    assert event.position.time_ms == ms
    assert type(event.position.time_ms) is int


def test_a_time_of_exactly_the_longest_length_is_read_and_one_longer_is_refused() -> None:
    longest = "2026-11-28T12:00:00.0000+00:00:00.000000"  # an offset with seconds: ISO 8601 allows it
    assert len(longest) == _MAX_TIME_LENGTH
    event = read_meter_event(event_body("Delete Meter", KEY, time=longest))
    assert event.position is not None
    assert event.position.time_ms == T0
    assert malformed(event_body("Delete Meter", KEY, time=longest.replace(".0000+", ".00000+"))).startswith(
        "time must be an ISO 8601 timestamp"
    )


@pytest.mark.parametrize(
    ("event_id", "kept"),
    [("e", True), ("e" * 128, True), ("e" * 129, False), ("", False), ("é", False), ("a\tb", False)],
)
def test_an_event_id_is_carried_only_when_it_looks_like_one(event_id: str, kept: bool) -> None:
    body = json.loads(event_body("Delete Meter", KEY))
    body["id"] = event_id
    assert read_meter_event(json.dumps(body)).event_id == (event_id if kept else None)


# --- what the handler reports and commits ----------------------------------------------------------------------


@dataclass
class Lease:
    state: MeterState
    commits: list[tuple[MeterState, str | None]]

    def commit(self, state: MeterState, *, event_id: str | None) -> None:
        self.commits.append((state, event_id))


@dataclass
class States:
    state: MeterState = field(default_factory=MeterState)
    commits: list[tuple[MeterState, str | None]] = field(default_factory=list)

    @contextlib.contextmanager
    def lease(self, key: MeterKey) -> Iterator[Lease]:
        yield Lease(self.state, self.commits)


class Api:
    """What UsageMeteringApi needs of a UsageEngineClient: records each request, answers from a script."""

    base_url = "https://api.example.test"

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, str, Any, Any]] = []

    def request(self, method: str, path: str, *, json: Any = None, params: Any = None, **_: Any) -> Any:
        self.calls.append((method, path, json, params))
        answer = self.answers.pop(0) if self.answers else {}
        if isinstance(answer, Exception):
            raise answer
        return Answer(answer, method, path)

    def get_json(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()


class Answer:
    def __init__(self, body: Any, method: str, path: str, status: int = 200) -> None:
        self.body = body
        self.status_code = status
        self.request = type("Sent", (), {"method": method, "path_url": path})()

    def json(self) -> Any:
        if isinstance(self.body, bytes):
            raise ValueError("not JSON")
        return self.body

    def close(self) -> None:
        pass


def handler(api: Api, states: States | None = None) -> tuple[MeterEventHandler, FakeDeadLetters, States]:
    dead, table = FakeDeadLetters(), states or States()
    return MeterEventHandler(UsageMeteringApi(api), dead, table), dead, table  # type: ignore[arg-type]


def test_a_create_of_a_meter_that_exists_already_is_reported_so_and_committed_with_the_event_id() -> None:
    existing = {"id": "m-1", **CREATE}
    subject, _, states = handler(Api({"meters": [existing]}))
    outcome = subject.handle(event_body("Create Meter", CREATE), "msg-1")
    assert (outcome.action, outcome.meter_id) == (MessageAction.ALREADY_EXISTS, "m-1")
    ((state, event_id),) = states.commits
    assert state.meter_id == "m-1"
    assert event_id is not None


def test_the_committed_event_id_is_the_events_own() -> None:
    body = json.loads(event_body("Update Meter", {**KEY, "value": 3}))
    body["id"] = "event-42"
    subject, _, states = handler(Api({"meters": [{"id": "m-1", **KEY}]}, {"id": "m-1"}))
    outcome = subject.handle(json.dumps(body), "msg-1")
    assert (outcome.action, outcome.meter_id) == (MessageAction.UPDATED, "m-1")
    assert states.commits[0][1] == "event-42"


def test_a_delete_reports_the_meter_it_deleted_or_found_gone() -> None:
    subject, _, _ = handler(Api({"meters": [{"id": "m-1", **KEY}]}, {}))
    outcome = subject.handle(event_body("Delete Meter", KEY), "msg-1")
    assert (outcome.action, outcome.meter_id) == (MessageAction.DELETED, "m-1")
    gone = UsageEngineApiError("DELETE", "/x", 404, "not_found")
    subject, _, _ = handler(Api({"meters": [{"id": "m-1", **KEY}]}, gone))
    outcome = subject.handle(event_body("Delete Meter", KEY), "msg-1")
    assert (outcome.action, outcome.meter_id) == (MessageAction.ALREADY_DELETED, "m-1")


@pytest.mark.parametrize(("meter_id", "expected"), [(42, "42"), ("m-7", "m-7")])
def test_a_meter_id_the_api_returns_as_a_number_is_used_as_text(meter_id: Any, expected: str) -> None:
    subject, _, _ = handler(Api({"meters": [{"id": meter_id, **KEY}]}, {}))
    assert subject.handle(event_body("Delete Meter", KEY), "msg-1").meter_id == expected


@pytest.mark.parametrize("meter_id", [True, None, "", 4.2])
def test_a_meter_without_a_usable_id_is_an_api_error_that_is_dead_lettered(meter_id: Any) -> None:
    subject, dead, _ = handler(Api({"meters": [{"id": meter_id, **KEY}]}))
    body = event_body("Delete Meter", KEY)
    outcome = subject.handle(body, "msg-9")
    assert outcome.dead_lettered
    reason = f"Usage Engine API GET {METERS_PATH} failed (HTTP 200): a meter in the answer has no id"
    assert dead.sent == [(body, reason, "msg-9")]


def test_a_retryable_api_error_is_retried_with_its_own_message() -> None:
    error = UsageEngineApiError("GET", METERS_PATH, 503, "busy")
    subject, _, _ = handler(Api(error))
    with pytest.raises(RetryableMessageError) as caught:
        subject.handle(event_body("Delete Meter", KEY), "msg-1")
    assert str(caught.value) == str(error)


# --- UsageMeteringApi's requests ------------------------------------------------------------------------------


def test_list_meters_sends_its_filters_and_applies_them_again() -> None:
    api = Api({"meters": [{"id": "a", "userId": "u"}, {"id": "b", "userId": "v"}]}, {"meters": [{"id": "c"}]})
    metering = UsageMeteringApi(api)  # type: ignore[arg-type]
    assert metering.list_meters(userId="u") == [{"id": "a", "userId": "u"}]
    assert metering.list_meters() == [{"id": "c"}]
    assert [(c[0], c[1], c[3]) for c in api.calls] == [
        ("GET", METERS_PATH, {"userId": "u"}),
        ("GET", METERS_PATH, None),
    ]


def test_create_meter_posts_exactly_the_four_fields() -> None:
    api = Api({"id": "m-1"})
    metering = UsageMeteringApi(api)  # type: ignore[arg-type]
    assert metering.create_meter(domain="acme", external_ref="r", meter_type_id="t", user_id="u") == {"id": "m-1"}
    assert api.calls == [
        ("POST", METERS_PATH, {"domain": "acme", "externalRef": "r", "meterTypeId": "t", "userId": "u"}, None)
    ]


@pytest.mark.parametrize(
    ("call", "method", "path"),
    [
        (
            lambda m: m.create_meter(domain="acme", external_ref="r", meter_type_id="t", user_id="u"),
            "POST",
            METERS_PATH,
        ),
        (lambda m: m.update_meter("m-1", value=1), "PATCH", METERS_PATH + "/m-1"),
    ],
)
def test_an_answer_that_is_not_json_or_not_an_object_is_an_api_error(call: Any, method: str, path: str) -> None:
    with pytest.raises(UsageEngineApiError) as not_json:
        call(UsageMeteringApi(Api(b"<html/>")))  # type: ignore[arg-type]
    assert (not_json.value.method, not_json.value.path, not_json.value.status, not_json.value.reason) == (
        method,
        path,
        200,
        "the answer is not JSON",
    )
    with pytest.raises(UsageEngineApiError) as not_object:
        call(UsageMeteringApi(Api([1])))  # type: ignore[arg-type]
    assert (not_object.value.method, not_object.value.path, not_object.value.status, not_object.value.reason) == (
        "GET",
        path,
        200,
        "the answer is not a JSON object",
    )


def test_ensure_meter_finds_creates_or_finds_again_after_a_conflict() -> None:
    found = {"id": "m-1", **KEY}
    args = {"domain": "acme", "external_ref": "ref-1", "meter_type_id": "t", "user_id": "u"}
    api = Api({"meters": [found]})
    assert UsageMeteringApi(api).ensure_meter(**args) == (found, False)  # type: ignore[arg-type]
    assert [(c[0], c[3]) for c in api.calls] == [("GET", {"domain": "acme", "externalRef": "ref-1"})]
    api = Api({"meters": []}, {"id": "m-2"})
    assert UsageMeteringApi(api).ensure_meter(**args) == ({"id": "m-2"}, True)  # type: ignore[arg-type]
    conflict = UsageEngineApiError("POST", METERS_PATH, 409, "conflict")
    api = Api({"meters": []}, conflict, {"meters": [found]})
    assert UsageMeteringApi(api).ensure_meter(**args) == (found, False)  # type: ignore[arg-type]
    assert api.calls[2][3] == {"domain": "acme", "externalRef": "ref-1"}
    api = Api({"meters": []}, conflict, {"meters": []})
    with pytest.raises(UsageEngineApiError) as caught:
        UsageMeteringApi(api).ensure_meter(**args)  # type: ignore[arg-type]
    assert (caught.value.method, caught.value.path, caught.value.status, caught.value.reason) == (
        "POST",
        METERS_PATH,
        409,
        "conflict, but no meter with that externalRef",
    )
    for status in (410, 500):
        other = UsageEngineApiError("POST", METERS_PATH, status, "x")
        with pytest.raises(UsageEngineApiError) as raised:
            UsageMeteringApi(Api({"meters": []}, other)).ensure_meter(**args)  # type: ignore[arg-type]
        assert raised.value is other


@pytest.mark.parametrize(
    ("changes", "sent"),
    [
        ({"value": 1}, {"value": 1}),
        ({"reset_at": None}, {"resetAt": None}),
        ({"reset_at": "2026-12-01T00:00:00Z"}, {"resetAt": "2026-12-01T00:00:00Z"}),
        ({"value": 0, "reset_at": "x"}, {"value": 0, "resetAt": "x"}),
    ],
)
def test_update_meter_patches_only_what_is_given(changes: dict[str, Any], sent: dict[str, Any]) -> None:
    api = Api({"id": "m-1"})
    assert UsageMeteringApi(api).update_meter("m-1", **changes) == {"id": "m-1"}  # type: ignore[arg-type]
    assert api.calls == [("PATCH", METERS_PATH + "/m-1", sent, None)]


def test_update_meter_needs_a_change() -> None:
    api = Api()
    with pytest.raises(ValueError, match=r"^update_meter needs value and/or reset_at$"):
        UsageMeteringApi(api).update_meter("m-1")  # type: ignore[arg-type]
    assert api.calls == []


def test_a_retryable_failure_that_is_not_the_apis_is_retried_with_its_own_message() -> None:
    from usage_engine.errors import TokenUnavailableError

    error = TokenUnavailableError("token secret t is missing")
    subject, _, _ = handler(Api(error))
    with pytest.raises(RetryableMessageError) as caught:
        subject.handle(event_body("Delete Meter", KEY), "msg-1")
    assert str(caught.value) == str(error)
    assert caught.value.__cause__ is error


def test_a_meter_list_of_another_shape_names_the_meters_path() -> None:
    with pytest.raises(UsageEngineApiError) as caught:
        UsageMeteringApi(Api({"items": []})).list_meters()  # type: ignore[arg-type]
    assert (caught.value.path, caught.value.reason) == (METERS_PATH, "the answer has no list 'meters'")
