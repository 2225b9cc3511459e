"""The handlers' own logic in the fast tier, loaded as Lambda loads them (local/lambda_runtime.load_module):
meter_query's mapping of every layer error to its HTTP answer and its userId rule, and the metrics the
meter events and refresher handlers record for each outcome."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import pytest

from local.lambda_runtime import load_module
from usage_engine.errors import (
    AuthenticationError,
    ConfigurationError,
    DeadlineExceededError,
    RefreshHoldOffError,
    SecretStoreError,
    TokenUnavailableError,
    UsageEngineApiError,
)
from usage_engine.meter_events import MessageOutcome
from usage_engine.states import MessageAction


@pytest.fixture(scope="module")
def meter_query() -> ModuleType:
    return load_module("meter_query")


def answer(response: dict[str, Any]) -> tuple[int, str, str, str | None]:
    body = json.loads(response["body"])
    return (
        response["statusCode"],
        body["error"]["code"],
        body["error"]["message"],
        response["headers"].get("Retry-After"),
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            DeadlineExceededError("GET /meters"),
            (504, "upstream_timeout", "the Usage Engine did not answer in the time this function has", None),
        ),
        (
            RefreshHoldOffError("held", retry_after_seconds=7.2),
            (503, "token_unavailable", "no valid Usage Engine token right now; retry shortly", "8"),
        ),
        (
            RefreshHoldOffError("held", retry_after_seconds=0.0),
            (503, "token_unavailable", "no valid Usage Engine token right now; retry shortly", "1"),
        ),
        (
            AuthenticationError("GET", "/m", 401, "rejected too"),
            (503, "upstream_authentication", "the Usage Engine rejected the service's credentials", None),
        ),
        (UsageEngineApiError("GET", "/m", 404, "no such user"), (404, "upstream_404", "no such user", None)),
        (UsageEngineApiError("GET", "/m", 429, "slow down"), (429, "upstream_429", "slow down", None)),
        (
            UsageEngineApiError("GET", "/m", None, "read timeout"),
            (504, "upstream_unreachable", "the Usage Engine API did not answer", None),
        ),
        (
            UsageEngineApiError("GET", "/m", 500, "boom"),
            (502, "upstream_error", "the Usage Engine API answered 500", None),
        ),
        (
            TokenUnavailableError("missing"),
            (503, "token_unavailable", "no valid Usage Engine token right now; retry shortly", None),
        ),
        (
            SecretStoreError("GetSecretValue", "t", "ThrottlingException"),
            (503, "secrets_unavailable", "the token store is busy or unreachable; retry shortly", None),
        ),
        (
            SecretStoreError("GetSecretValue", "t", "AccessDeniedException"),
            (500, "internal_error", "the service is misconfigured or its secrets are unreachable", None),
        ),
        (
            ConfigurationError("TOKEN_SECRET_ID", "is required but not set"),
            (500, "internal_error", "the service is misconfigured or its secrets are unreachable", None),
        ),
    ],
)
def test_every_layer_error_has_its_http_answer(
    meter_query: ModuleType, error: Exception, expected: tuple[int, str, str, str | None]
) -> None:
    assert answer(meter_query._map_error(error)) == expected


def logged(caplog: pytest.LogCaptureFixture, module: ModuleType, *facts: str) -> dict[str, Any]:
    """The one record the handler's logger wrote: level, message and the named extra fields."""
    (record,) = [r for r in caplog.records if r.name == module.logger.name]
    caplog.clear()
    return {"level": record.levelname, "message": record.getMessage(), **{k: getattr(record, k) for k in facts}}


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (DeadlineExceededError("GET /m"), {"level": "WARNING", "message": "Out of time"}),
        (
            RefreshHoldOffError("held", retry_after_seconds=1),
            {"level": "WARNING", "message": "No Usage Engine token (holding off)"},
        ),
        (
            AuthenticationError("GET", "/m", 401, "x"),
            {"level": "ERROR", "message": "Usage Engine rejected fresh tokens"},
        ),
        (
            UsageEngineApiError("GET", "/m", 500, "boom"),
            {"level": "WARNING", "message": "Usage Engine API error", "status": 500},
        ),
        (TokenUnavailableError("missing"), {"level": "ERROR", "message": "No Usage Engine token"}),
        (
            SecretStoreError("GetSecretValue", "t", "ThrottlingException"),
            {"level": "WARNING", "message": "Secrets Manager unavailable"},
        ),
        (
            ConfigurationError("X", "is required but not set"),
            {"level": "ERROR", "message": "Meter query failed", "error_type": "ConfigurationError"},
        ),
    ],
)
def test_every_mapped_error_is_logged_once_with_what_happened(
    meter_query: ModuleType, caplog: pytest.LogCaptureFixture, error: Exception, line: dict[str, Any]
) -> None:
    caplog.clear()
    meter_query._map_error(error)
    facts = [key for key in line if key not in ("level", "message")]
    assert logged(caplog, meter_query, "error", *facts) == {**line, "error": str(error)}


class Meters:
    base_url = "https://api.example.test"

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.asked: list[tuple[str, Any]] = []

    def get_json(self, path: str, **kwargs: Any) -> Any:
        params = kwargs.get("params") or {}
        self.asked.append((path, params))
        if self.error is not None:
            raise self.error
        return {"meters": [{"id": "m-1", **params}, {"id": "m-2", "userId": "someone-else"}]}


@pytest.fixture
def client(meter_query: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Meters:
    meters = Meters()
    monkeypatch.setattr(meter_query, "components", lambda: type("C", (), {"client_from_env": lambda self: meters})())
    return meters


@pytest.mark.parametrize("user_id", ["u", "a" * 128, "user.name_1@tenant:x+y-z"])
def test_a_user_id_of_the_rule_is_queried(meter_query: ModuleType, client: Meters, user_id: str) -> None:
    response = meter_query.list_user_meters(user_id)
    assert response["statusCode"] == 200
    assert json.loads(response["body"]) == {"userId": user_id, "meters": [{"id": "m-1", "userId": user_id}]}
    assert client.asked[0][1] == {"userId": user_id}


@pytest.mark.parametrize("user_id", ["", "a" * 129, "a/b", "a b", "ü"])
def test_a_user_id_outside_the_rule_is_refused_without_a_request(
    meter_query: ModuleType, client: Meters, user_id: str
) -> None:
    assert answer(meter_query.list_user_meters(user_id)) == (
        400,
        "invalid_user_id",
        "userId must be 1-128 characters of letters, digits and . _ @ : + -",
        None,
    )
    assert client.asked == []


def test_an_api_error_of_the_query_is_mapped(meter_query: ModuleType, client: Meters) -> None:
    client.error = UsageEngineApiError("GET", "/m", 503, "busy")
    assert meter_query.list_user_meters("u")["statusCode"] == 502


# --- the metrics the other handlers record -------------------------------------------------------------------


def recorded(module: ModuleType) -> dict[str, Any]:
    metric_set = dict(module.metrics.metric_set)
    module.metrics.clear_metrics()
    return {name: (entry["Unit"], entry["Value"]) for name, entry in metric_set.items()}


@pytest.fixture(scope="module")
def meter_events() -> ModuleType:
    return load_module("meter_events")


@pytest.mark.parametrize(
    ("outcome", "metric"),
    [
        (MessageOutcome(MessageAction.DEAD_LETTERED, reason="bad"), "MeterEventsDeadLettered"),
        (MessageOutcome(MessageAction.SUPERSEDED, meter_id="m-1"), "MeterEventsSuperseded"),
        (MessageOutcome(MessageAction.CREATED, meter_id="m-1"), "MeterEventsApplied"),
        (MessageOutcome(MessageAction.ALREADY_DELETED), "MeterEventsApplied"),
    ],
)
def test_each_outcome_counts_one_metric(meter_events: ModuleType, outcome: MessageOutcome, metric: str) -> None:
    meter_events.metrics.clear_metrics()
    meter_events._record(outcome, "msg-1")
    assert recorded(meter_events) == {metric: ("Count", [1.0])}


@pytest.mark.parametrize(
    ("outcome", "line"),
    [
        (
            MessageOutcome(MessageAction.DEAD_LETTERED, reason="bad"),
            {"level": "ERROR", "message": "Meter event dead-lettered", "reason": "bad"},
        ),
        (
            MessageOutcome(MessageAction.SUPERSEDED, meter_id="m-1"),
            {"level": "INFO", "message": "Meter event superseded", "meter_id": "m-1"},
        ),
        (
            MessageOutcome(MessageAction.CREATED, meter_id="m-1"),
            {"level": "INFO", "message": "Meter event applied", "action": "created", "meter_id": "m-1"},
        ),
    ],
)
def test_each_outcome_is_logged_with_its_message_id(
    meter_events: ModuleType, caplog: pytest.LogCaptureFixture, outcome: MessageOutcome, line: dict[str, Any]
) -> None:
    caplog.clear()
    meter_events._record(outcome, "msg-1")
    meter_events.metrics.clear_metrics()
    facts = [key for key in line if key not in ("level", "message")]
    assert logged(caplog, meter_events, "message_id", *facts) == {**line, "message_id": "msg-1"}


@pytest.fixture(scope="module")
def token_refresher() -> ModuleType:
    return load_module("token_refresher")


@pytest.mark.parametrize(("seconds", "value"), [(3599.9, 3599.0), (0.5, 0.0), (-30.0, 0.0)])
def test_the_tokens_remaining_seconds_are_whole_and_never_negative(
    token_refresher: ModuleType, seconds: float, value: float
) -> None:
    token_refresher.metrics.clear_metrics()
    token_refresher._record_seconds_remaining(seconds)
    assert recorded(token_refresher) == {"TokenSecondsRemaining": ("Seconds", [value])}
