"""Identifiers from outside never address another resource: for any string, either a typed error naming the field,
or a request whose path, as requests really sends it (prepared, dot segments removed), is the meters collection
plus exactly one segment that decodes back to the identifier."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
from hypothesis import given
from hypothesis import strategies as st

from tests.property.strategies import PROPERTY, attempt
from tests.unit.test_meter_order import FakeClient, FakeDeadLetters, FakeStates
from usage_engine.identifiers import (
    DOMAIN,
    EXTERNAL_REF,
    METER_ID,
    METER_TYPE_ID,
    USER_ID,
    IdentifierRule,
    InvalidIdentifierError,
    check_identifier,
)
from usage_engine.meter_events import CreateMeter, MalformedMessageError, MeterEventHandler, parse_meter_event
from usage_engine.metering import METERS_PATH, UsageMeteringApi
from usage_engine.states import MessageAction

# Strings near the edge: dots, slashes, percent escapes, query and fragment marks, and anything at all.
tricky = st.text(alphabet="./%2eE?#;\\ -_~aZ9", max_size=8)
valid_meter_ids = st.text(alphabet="abcXYZ019._~-", min_size=1, max_size=128)
identifiers = st.one_of(st.text(max_size=140), tricky, valid_meter_ids, st.sampled_from([".", "..", "...", "%2e"]))
base_urls = st.sampled_from(
    ["https://api.example.test", "https://api.example.test/prefix", "http://127.0.0.1:8080/a/b"]
)


def sent_path(url: str) -> str:
    return urlsplit(requests.Request("GET", url).prepare().url or "").path


class RecordingClient:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.paths: list[str] = []

    def request(self, method: str, path: str, **_: Any) -> Any:
        self.paths.append(path)
        return _Response()

    def get_json(self, path: str, **_: Any) -> Any:
        self.paths.append(path)
        return {"id": "x"}


class _Response:
    def json(self) -> Any:
        return {"id": "x"}

    def close(self) -> None:
        pass


def assert_addresses_only(base_url: str, path: str, meter_id: str) -> None:
    collection = sent_path(base_url + METERS_PATH)
    sent = sent_path(base_url + path)
    assert sent.startswith(collection + "/")
    segment = sent[len(collection) + 1 :]
    assert segment
    assert "/" not in segment
    assert unquote(segment) == meter_id


def valid(rule: IdentifierRule, value: str) -> bool:
    return value not in (".", "..") and rule.pattern.fullmatch(value) is not None


@PROPERTY
@given(identifiers, base_urls, st.sampled_from(["get", "update", "delete"]))
def test_a_meter_request_addresses_that_meter_or_is_refused(meter_id: str, base_url: str, operation: str) -> None:
    client = RecordingClient(base_url)
    api = UsageMeteringApi(client)  # type: ignore[arg-type]
    call = {
        "get": lambda: api.get_meter(meter_id),
        "update": lambda: api.update_meter(meter_id, value=1),
        "delete": lambda: api.delete_meter(meter_id),
    }[operation]
    _, error = attempt(call, InvalidIdentifierError)
    if error is not None:
        assert isinstance(error, InvalidIdentifierError)
        assert error.field == "meterId"
        assert str(error).startswith("meterId ")
        assert client.paths == []
        assert not valid(METER_ID, meter_id)
        return
    (path,) = client.paths
    assert_addresses_only(base_url, path, meter_id)
    assert valid(METER_ID, meter_id)


RULES = {rule.field: rule for rule in (DOMAIN, EXTERNAL_REF, METER_TYPE_ID, USER_ID)}


@PROPERTY
@given(st.sampled_from(sorted(RULES)), identifiers)
def test_a_create_carries_each_identifier_exactly_or_names_the_field(field: str, value: str) -> None:
    detail = {"domain": "acme", "externalRef": "ref-1", "meterTypeId": "api-calls", "userId": "user-1", field: value}
    body = json.dumps({"detail-type": "Create Meter", "detail": detail})
    command, error = attempt(lambda: parse_meter_event(body), MalformedMessageError)
    if error is not None:
        assert str(error).startswith(f"detail.{field} ")
        assert not valid(RULES[field], value)
        return
    assert isinstance(command, CreateMeter)
    carried = {
        "domain": command.domain,
        "externalRef": command.external_ref,
        "meterTypeId": command.meter_type_id,
        "userId": command.user_id,
    }
    assert carried[field] == value
    assert check_identifier(RULES[field], value) == value


@PROPERTY
@given(identifiers, st.sampled_from(["Update Meter", "Delete Meter"]), base_urls)
def test_an_event_by_meter_id_is_dead_lettered_naming_the_field_or_addresses_only_that_meter(
    meter_id: str, detail_type: str, base_url: str
) -> None:
    client, dead = FakeClient(), FakeDeadLetters()
    client.base_url = base_url
    handler = MeterEventHandler(UsageMeteringApi(client), dead, FakeStates())  # type: ignore[arg-type]
    detail: dict[str, Any] = {"meterId": meter_id, **({"value": 1} if detail_type == "Update Meter" else {})}
    outcome = handler.handle(json.dumps({"detail-type": detail_type, "detail": detail}), "message-1")
    if outcome.action == MessageAction.DEAD_LETTERED and not client.calls:
        assert (outcome.reason or "").startswith("detail.meterId ")
        assert not valid(METER_ID, meter_id)
        return
    # Sent: the meter does not exist in the fake, so the answer is a 404 (dead letter or already deleted).
    assert valid(METER_ID, meter_id)
    for _, path in client.calls:
        assert_addresses_only(base_url, path, meter_id)
