"""What the layer's errors and small helpers say, exactly: messages and attributes of the typed errors, the
credentials parser's problems, identifier rules built at run time, short-sentence limits, a stored token's
description, the X-Ray switch's error, and where the layer's structured logs and API-call metrics go."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from aws_lambda_powertools import Logger

from usage_engine import observability
from usage_engine.credentials import parse_credentials
from usage_engine.errors import (
    ConfigurationError,
    CredentialsError,
    CredentialsRejectedError,
    IdpError,
    InvalidIdentifierError,
    RefreshFailedError,
    RefreshHoldOffError,
    RefreshRequestError,
    SecretStoreError,
)
from usage_engine.identifiers import IdentifierRule, check_identifier
from usage_engine.observability import LAYER_LOGGER, publish_api_calls, structured_layer_logs
from usage_engine.safe_text import MAX_REASON_LENGTH, is_short_sentence
from usage_engine.states import TokenProblem
from usage_engine.token_store import StoredToken
from usage_engine.tracing import XRAY_SDK_SETTING, handler_tracing, xray_sdk_enabled


def test_a_remembered_rejection_says_everything_it_knows() -> None:
    error = CredentialsRejectedError(
        credentials_version="v7", count=3, status=401, reason="invalid_client", seconds_ago=12.9, retry_in=47.6
    )
    assert str(error) == (
        "the IdP rejected credentials version v7 3 time(s) in a row (HTTP 401): invalid_client, last 12 s ago; "
        "not asked again until the credentials secret changes or a forced refresh (next scheduled retry in 47 s)"
    )
    assert (error.reason, error.status, error.attempts, error.credentials_version, error.count) == (
        "invalid_client",
        401,
        0,
        "v7",
        3,
    )
    unknown = CredentialsRejectedError(
        credentials_version=None, count=1, status=None, reason="r", seconds_ago=0, retry_in=None
    )
    assert "credentials version (unknown) 1 time(s) in a row (no HTTP status): r" in str(unknown)
    assert str(unknown).endswith("(on-demand runs do not retry)")


def test_an_idp_error_counts_its_attempts_and_says_where_it_failed() -> None:
    assert str(IdpError("timeout")) == "token request failed after 1 attempt(s) (no HTTP response): timeout"
    error = IdpError("server_error", status=503, attempts=4)
    assert str(error) == "token request failed after 4 attempt(s) (HTTP 503): server_error"
    assert (error.reason, error.status, error.attempts) == ("server_error", 503, 4)


def test_the_other_errors_messages_and_attributes() -> None:
    store = SecretStoreError("GetSecretValue", "usage-engine/token", "AccessDeniedException")
    assert str(store) == "Secrets Manager GetSecretValue on usage-engine/token failed: AccessDeniedException"
    assert (store.operation, store.secret_id, store.code) == (
        "GetSecretValue",
        "usage-engine/token",
        "AccessDeniedException",
    )
    assert str(RefreshRequestError("bad reason")) == "refresh request: bad reason"
    hold_off = RefreshHoldOffError("wait a bit", retry_after_seconds=3.5)
    assert (str(hold_off), hold_off.retry_after_seconds) == ("wait a bit", 3.5)
    failed = RefreshFailedError("expiring", store, 42.0)
    assert (failed.reason, failed.cause, failed.stored_seconds_remaining) == ("expiring", store, 42.0)
    assert str(failed) == f"token refresh (expiring) failed, stored token left untouched: {store}"
    invalid = InvalidIdentifierError("meterId", "must be short")
    assert (invalid.field, invalid.problem, str(invalid)) == ("meterId", "must be short", "meterId must be short")


@pytest.mark.parametrize(
    ("document", "field", "problem"),
    [
        ("{", "(document)", "is not valid JSON"),
        ("[]", "(document)", "is not a JSON object"),
        ("{}", "client_id", "is missing"),
        (
            '{"client_id": "a", "clientId": "b", "client_secret": "s"}',
            "client_id",
            "is given twice (client_id and clientId) with different values",
        ),
        ('{"client_id": " ", "client_secret": "s"}', "client_id", "must be a non-empty string"),
        (
            '{"client_id": "a", "client_secret": "s", "audience": " "}',
            "audience",
            "must be a non-empty string when present",
        ),
        (
            '{"client_id": "a", "client_secret": "s", "token_url": "http://idp.example/t"}',
            "token_url",
            "must be an https:// URL (http:// only for loopback)",
        ),
    ],
)
def test_each_credentials_problem_names_the_field(document: str, field: str, problem: str) -> None:
    with pytest.raises(CredentialsError) as caught:
        parse_credentials(document)
    assert (caught.value.field, str(caught.value)) == (field, f"credentials secret: {field}: {problem}")


def test_an_identifier_rule_built_at_run_time_has_its_own_pattern() -> None:
    rule = IdentifierRule("code", "a-c", 3, "a, b or c")
    assert rule.pattern.fullmatch("abc")
    assert not rule.pattern.fullmatch("abcd")
    assert not rule.pattern.fullmatch("abd")
    assert check_identifier(rule, "cab") == "cab"
    with pytest.raises(InvalidIdentifierError) as caught:
        check_identifier(rule, "d")
    assert str(caught.value) == "code must be 1-3 characters of a, b or c, not '.' or '..'"


@pytest.mark.parametrize(
    ("text", "short"),
    [
        ("", False),
        ("a", True),
        ("x" * MAX_REASON_LENGTH, True),
        ("x" * (MAX_REASON_LENGTH + 1), False),
        ("a\nb", False),
    ],
)
def test_a_short_sentence_is_1_to_the_limit_printable_characters(text: str, short: bool) -> None:
    assert is_short_sentence(text) is short


def test_a_stored_token_problem_is_described_with_its_detail_when_it_has_one() -> None:
    assert StoredToken(None, TokenProblem.UNREADABLE).describe() == "unreadable"
    assert StoredToken(None, TokenProblem.UNREADABLE, "expires_at: bad").describe() == "unreadable (expires_at: bad)"
    assert StoredToken(None).describe() == "unreadable"


def test_the_xray_switch_defaults_to_off_and_says_how_to_get_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(XRAY_SDK_SETTING, raising=False)
    assert xray_sdk_enabled() is False
    monkeypatch.setenv(XRAY_SDK_SETTING, "TRUE")
    monkeypatch.setitem(sys.modules, "aws_xray_sdk", None)  # not installed
    with pytest.raises(ConfigurationError) as caught:
        handler_tracing("svc")
    assert str(caught.value).endswith(
        "is true but the X-Ray SDK is not installed: deploy with XRaySdkTracing=Enabled (it adds the X-Ray "
        "SDK layer) or add aws-xray-sdk to the function"
    )


def test_the_layers_logs_are_configured_even_before_its_logger_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    registered = logging.root.manager.loggerDict
    for name in [name for name in registered if name == LAYER_LOGGER or name.startswith(LAYER_LOGGER + ".")]:
        monkeypatch.delitem(registered, name)
    logger = Logger(service="unit", level="WARNING")
    structured_layer_logs(logger, level="DEBUG")
    layer = logging.getLogger(LAYER_LOGGER)
    assert layer.handlers == logger.handlers
    assert layer.level == logging.DEBUG
    assert not layer.propagate
    # Only the layer's loggers: nothing else is taken over.
    assert not set(logger.handlers) & set(logging.getLogger("botocore").handlers)
    layer.handlers.clear()


def test_api_calls_are_counted_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    publish_api_calls({"2xx": 1}, service="svc", namespace="Ns")
    (document,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "Ns"
    assert directive["Metrics"] == [{"Name": "ApiCalls", "Unit": "Count"}]
    assert observability.NAMESPACE == "UsageEngine"
