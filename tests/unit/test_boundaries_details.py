"""Small facts each part owes its caller: the names in errors (secret ids, the meter state table's operations,
a failed credentials URL's variable), tombstones read back, an unknown AWS error code, trailing slashes cut
from URLs and nothing else, a bounded client used only with a full wait to compare against, the busy
refresher's debug facts, and what an unreadable token secret is reported as."""

from __future__ import annotations

import json
import logging
from typing import Any, cast

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from botocore.stub import Stubber

from tests.unit.test_boundaries_meter_state import KEY, STORED, TABLE, acquire_request
from tests.unit.test_boundaries_meter_state import dynamo as dynamo
from tests.unit.test_boundaries_meter_state import table as state_table
from usage_engine import TokenProvider, TokenStore, UsageEngineClient
from usage_engine.credentials import parse_credentials
from usage_engine.deadline import Deadline, DeadlineBoundClient, deadline_scope
from usage_engine.errors import (
    ConfigurationError,
    CredentialsError,
    DeadlineExceededError,
    RetryableMessageError,
    SecretStoreError,
    UsageEngineApiError,
)
from usage_engine.meter_order import MeterState, Position
from usage_engine.meter_state import MeterStateTable
from usage_engine.refresh_requester import LambdaRefreshRequester
from usage_engine.safe_text import client_error_code
from usage_engine.secrets_manager import SecretsManagerSecret
from usage_engine.settings import ConsumerSettings
from usage_engine.states import RefreshReason, RefreshResult, TokenProblem

CLOCK = lambda: 0.0  # noqa: E731


def test_an_api_error_without_a_status_says_there_was_no_answer() -> None:
    assert str(UsageEngineApiError("GET", "/m", None, "read timeout")) == (
        "Usage Engine API GET /m failed (no HTTP response): read timeout"
    )
    assert str(UsageEngineApiError("GET", "/m", 0, "odd")) == "Usage Engine API GET /m failed (HTTP 0): odd"


def test_a_credentials_url_problem_keeps_the_settings_reason_as_its_cause() -> None:
    with pytest.raises(CredentialsError) as caught:
        parse_credentials('{"client_id": "a", "client_secret": "s", "audience": "ftp://x.example"}')
    cause = caught.value.__cause__
    assert isinstance(cause, ConfigurationError)
    assert cause.variable == "audience"


@pytest.mark.parametrize(
    ("response", "code"),
    [
        ({}, "Unknown"),
        ({"Error": {}}, "Unknown"),
        ({"Error": {"Code": ""}}, "Unknown"),
        ({"Error": {"Code": "Denied"}}, "Denied"),
    ],
)
def test_an_aws_error_without_a_code_is_unknown(response: dict[str, Any], code: str) -> None:
    assert client_error_code(ClientError(response, "GetSecretValue")) == code  # type: ignore[arg-type]


def test_only_trailing_slashes_are_cut_from_an_api_url() -> None:
    env = {"TOKEN_SECRET_ID": "t", "USAGE_ENGINE_API_URL": "https://api.example.com/baseX//"}
    assert ConsumerSettings.from_env(env).api_url == "https://api.example.com/baseX"
    tokens = TokenProvider(TokenStore(SecretsManagerSecret(object(), "t")))  # type: ignore[arg-type]
    assert UsageEngineClient("https://api.example.com/baseX//", tokens).base_url == "https://api.example.com/baseX"


# --- a bounded client needs a full wait to compare against ----------------------------------------------------


class Counting:
    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    def get_secret_value(self, **_: Any) -> dict[str, Any]:
        self.calls += 1
        return {"SecretString": self.name}

    def invoke(self, **_: Any) -> dict[str, Any]:
        self.calls += 1
        import io

        return {"Payload": io.BytesIO(b'{"refreshed": true}')}

    def get_item(self, **_: Any) -> dict[str, Any]:
        self.calls += 1
        return {}

    update_item = put_item = delete_item = get_item


def test_without_a_full_wait_the_full_client_is_used_whatever_the_time_left() -> None:
    full, bounded = Counting("full"), Counting("bounded")

    def within(_: float) -> Any:
        return bounded

    with deadline_scope(Deadline(0.5, CLOCK)):
        assert DeadlineBoundClient(full, within).for_now("x") is full
        assert SecretsManagerSecret(cast(Any, full), "s", client_within=within).read() == "full"
        MeterStateTable(cast(Any, full), TABLE, client_within=within).read(KEY)
    with deadline_scope(Deadline(1.5, CLOCK)):
        LambdaRefreshRequester(cast(Any, full), "f", client_within=within).request(RefreshReason.EXPIRED)
    assert (full.calls, bounded.calls) == (3, 0)


# --- names in errors -------------------------------------------------------------------------------------------


class Unreachable:
    def get_secret_value(self, **_: Any) -> Any:
        raise EndpointConnectionError(endpoint_url="https://secretsmanager.example")

    def put_secret_value(self, **_: Any) -> Any:
        raise EndpointConnectionError(endpoint_url="https://secretsmanager.example")

    def get_item(self, **_: Any) -> Any:
        raise EndpointConnectionError(endpoint_url="https://dynamodb.example")

    update_item = put_item = delete_item = get_item


def test_secret_store_errors_name_the_secret() -> None:
    secret = SecretsManagerSecret(Unreachable(), "usage-engine/token")  # type: ignore[arg-type]
    for call in (secret.read, lambda: secret.write("{}")):
        with pytest.raises(SecretStoreError) as caught:
            call()
        assert caught.value.secret_id == "usage-engine/token"
    binary = SecretsManagerSecret(type("B", (), {"get_secret_value": lambda self, **_: {"SecretBinary": b"x"}})(), "t2")
    with pytest.raises(SecretStoreError) as binary_error:
        binary.read()
    assert binary_error.value.secret_id == "t2"


def test_the_state_tables_failures_name_the_operation() -> None:
    table = MeterStateTable(Unreachable(), TABLE)  # type: ignore[arg-type]
    with pytest.raises(RetryableMessageError) as caught:
        table.read(KEY)
    assert str(caught.value) == "meter state table: GetItem failed: EndpointConnectionError"
    with deadline_scope(Deadline(0.0, CLOCK)), pytest.raises(DeadlineExceededError) as late:
        table.read(KEY)
    assert late.value.what == "meter state table GetItem"


def test_a_tombstone_is_read_back_as_deleted(dynamo: tuple[Any, Stubber]) -> None:
    client, stub = dynamo
    tombstone = {
        "pk": {"S": "acme/ref-1"},
        "lastTime": {"N": "7000"},
        "deleted": {"BOOL": True},
        "meterId": {"S": "m-1"},
    }
    stub.add_response("get_item", {"Item": tombstone})
    assert MeterStateTable(client, TABLE).read(KEY) == MeterState(last=Position(7000), deleted=True, meter_id="m-1")


def test_a_lease_is_committed_once_and_says_so(dynamo: tuple[Any, Stubber]) -> None:
    client, stub = dynamo
    stub.add_response("update_item", {"Attributes": STORED}, acquire_request())
    stub.add_response("put_item", {})
    with state_table(client).lease(KEY) as lease:
        lease.commit(MeterState(last=Position(1)), event_id=None)
        with pytest.raises(RuntimeError, match=r"^a lease is committed once$"):
            lease.commit(MeterState(last=Position(2)), event_id=None)


# --- the busy refresher's debug facts --------------------------------------------------------------------------


class Busy:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def invoke(self, **_: Any) -> Any:
        raise self.error


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (ClientError({"Error": {"Code": "TooManyRequestsException"}}, "Invoke"), "TooManyRequestsException"),
        (ReadTimeoutError(endpoint_url="https://lambda"), "ReadTimeoutError"),
    ],
)
def test_a_busy_refresher_is_logged_at_debug_with_its_cause(
    caplog: pytest.LogCaptureFixture, error: Exception, cause: str
) -> None:
    with caplog.at_level(logging.DEBUG, logger="usage_engine.refresh_requester"):
        answer = LambdaRefreshRequester(Busy(error), "f").request(RefreshReason.EXPIRED)  # type: ignore[arg-type]
    assert answer.result == RefreshResult.BUSY
    (record,) = [r for r in caplog.records if r.name == "usage_engine.refresh_requester"]
    assert (record.levelno, record.getMessage(), record.cause) == (logging.DEBUG, "Token refresher busy", cause)  # type: ignore[attr-defined]


# --- an unreadable token secret ---------------------------------------------------------------------------------


class Holding:
    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response

    def get_secret_value(self, **_: Any) -> dict[str, Any]:
        return self.response


def test_an_unreadable_token_secret_is_reported_with_what_is_wrong() -> None:
    binary = TokenStore(SecretsManagerSecret(Holding({"SecretBinary": b"x"}), "t")).load()  # type: ignore[arg-type]
    assert (binary.token, binary.problem, binary.detail) == (
        None,
        TokenProblem.UNREADABLE,
        "a binary value, not a JSON string",
    )
    garbled = TokenStore(SecretsManagerSecret(Holding({"SecretString": "{"}), "t")).load()  # type: ignore[arg-type]
    assert (garbled.token, garbled.problem, garbled.detail) == (
        None,
        TokenProblem.UNREADABLE,
        "token secret: (document): is not valid JSON",
    )


# --- parts only the refresher's tooling and handler use ---------------------------------------------------------


def test_the_canonical_credentials_document_has_optional_keys_only_when_set() -> None:
    from usage_engine.credentials import ClientCredentials, encode_credentials

    assert json.loads(encode_credentials(ClientCredentials("id-1", "s3cr3t-q"))) == {
        "client_id": "id-1",
        "client_secret": "s3cr3t-q",
    }
    full = ClientCredentials("id-1", "s3cr3t-q", audience="https://aud/", token_url="https://idp/t")
    assert json.loads(encode_credentials(full)) == {
        "client_id": "id-1",
        "client_secret": "s3cr3t-q",
        "audience": "https://aud/",
        "token_url": "https://idp/t",
    }
    assert parse_credentials(encode_credentials(full)) == full


def test_the_refresher_from_settings_and_from_the_environment_is_the_containers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from usage_engine import RefresherSettings, TokenRefresher, components, reset_components

    settings = RefresherSettings(credentials_secret_id="c", token_secret_id="t")
    clock = lambda: 5.0  # noqa: E731
    try:
        reset_components(secrets_manager=object(), exchange=object())
        refresher = TokenRefresher.from_settings(settings, clock=clock)
        assert (refresher._settings, refresher._clock) == (settings, clock)
        assert refresher.memory is components().refresher(settings).memory
        monkeypatch.setenv("CREDENTIALS_SECRET_ID", "c")
        monkeypatch.setenv("TOKEN_SECRET_ID", "t")
        from_env = components().refresher_from_env()
        assert from_env._settings == RefresherSettings.from_env()
        assert from_env.memory is refresher.memory
    finally:
        reset_components()
