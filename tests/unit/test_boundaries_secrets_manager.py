"""One Secrets Manager secret over botocore's Stubber: the exact GetSecretValue and PutSecretValue requests,
and every failure as a SecretStoreError that names the operation, the secret and the error's code only."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from botocore.stub import Stubber

from usage_engine.aws_clients import new_secrets_manager_client, new_session
from usage_engine.deadline import Deadline, deadline_scope
from usage_engine.errors import SECRET_BINARY_NOT_SUPPORTED, DeadlineExceededError, SecretStoreError
from usage_engine.secrets_manager import SecretsManagerSecret

SECRET = "usage-engine/token"


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Stubber]]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", raising=False)
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=42))
    client = new_secrets_manager_client(new_session())
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


def test_a_new_version_is_written_with_a_fresh_idempotency_token(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    request = {"SecretId": SECRET, "SecretString": '{"a":1}', "ClientRequestToken": str(uuid.UUID(int=42))}
    stub.add_response("put_secret_value", {"VersionId": "v" * 32}, request)
    assert SecretsManagerSecret(client, SECRET).write('{"a":1}') == "v" * 32


@pytest.mark.parametrize("code", ["AccessDeniedException", "LimitExceededException", "ResourceNotFoundException"])
def test_a_failed_write_names_the_operation_secret_and_code(stubbed: tuple[Any, Stubber], code: str) -> None:
    client, stub = stubbed
    stub.add_client_error("put_secret_value", code, "a message that is never repeated")
    with pytest.raises(SecretStoreError) as caught:
        SecretsManagerSecret(client, SECRET).write("{}")
    assert (caught.value.operation, caught.value.secret_id, caught.value.code) == ("PutSecretValue", SECRET, code)
    assert "never repeated" not in str(caught.value)
    assert caught.value.__cause__ is None


def test_the_current_value_is_read_with_its_version(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    stub.add_response("get_secret_value", {"SecretString": "{}", "VersionId": "v" * 32}, {"SecretId": SECRET})
    stub.add_response("get_secret_value", {"SecretString": "{}"}, {"SecretId": SECRET})
    secret = SecretsManagerSecret(client, SECRET)
    assert secret.read_with_version() == ("{}", "v" * 32)
    assert secret.read() == "{}"
    assert secret.secret_id == SECRET


def test_a_secret_without_a_value_reads_as_none(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    stub.add_client_error("get_secret_value", "ResourceNotFoundException")
    assert SecretsManagerSecret(client, SECRET).read_with_version() == (None, None)


def test_a_binary_secret_is_refused_with_its_own_code(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    stub.add_response("get_secret_value", {"SecretBinary": b"\x00"})
    with pytest.raises(SecretStoreError) as caught:
        SecretsManagerSecret(client, SECRET).read()
    assert (caught.value.operation, caught.value.code) == ("GetSecretValue", SECRET_BINARY_NOT_SUPPORTED)


@pytest.mark.parametrize("code", ["AccessDeniedException", "DecryptionFailure", "ThrottlingException"])
def test_a_failed_read_names_the_code(stubbed: tuple[Any, Stubber], code: str) -> None:
    client, stub = stubbed
    stub.add_client_error("get_secret_value", code)
    with pytest.raises(SecretStoreError) as caught:
        SecretsManagerSecret(client, SECRET).read()
    assert (caught.value.operation, caught.value.secret_id, caught.value.code) == ("GetSecretValue", SECRET, code)


class Unreachable:
    """A client whose every call fails below the API (what botocore raises for a refused connection)."""

    def get_secret_value(self, **_: Any) -> Any:
        raise EndpointConnectionError(endpoint_url="https://secretsmanager.example")

    def put_secret_value(self, **_: Any) -> Any:
        raise EndpointConnectionError(endpoint_url="https://secretsmanager.example")


@pytest.mark.parametrize(("call", "operation"), [("read", "GetSecretValue"), ("write", "PutSecretValue")])
def test_a_transport_failure_is_named_by_its_kind(call: str, operation: str) -> None:
    secret = SecretsManagerSecret(Unreachable(), SECRET)  # type: ignore[arg-type]
    with pytest.raises(SecretStoreError) as caught:
        getattr(secret, call)(*(("{}",) if call == "write" else ()))
    assert (caught.value.operation, caught.value.code) == (operation, "EndpointConnectionError")


def test_a_read_with_no_time_left_is_not_sent(stubbed: tuple[Any, Stubber]) -> None:
    client, _ = stubbed
    clock = lambda: 0.0  # noqa: E731
    with deadline_scope(Deadline(0.0, clock)), pytest.raises(DeadlineExceededError) as caught:
        SecretsManagerSecret(client, SECRET).read()
    assert caught.value.what == f"Secrets Manager GetSecretValue on {SECRET}"


def test_a_read_near_the_deadline_uses_the_bounded_client() -> None:
    bounded = type("Bounded", (), {"get_secret_value": lambda self, **_: {"SecretString": "b"}})()
    full = type("Full", (), {"get_secret_value": lambda self, **_: {"SecretString": "f"}})()
    asked: list[float] = []

    def within(seconds: float) -> Any:
        asked.append(seconds)
        return bounded

    secret = SecretsManagerSecret(full, SECRET, client_within=within, full_wait_seconds=30.0)
    assert secret.read() == "f"
    with deadline_scope(Deadline(10.0, lambda: 0.0)):
        assert secret.read() == "b"
    assert asked == [10.0]
