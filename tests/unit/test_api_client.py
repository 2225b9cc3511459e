"""UsageEngineClient's recovery logic with fakes at the boundary: the token store and the refresher."""

from __future__ import annotations

from typing import Any

import pytest

from local.usage_engine_emulator import UsageEngineEmulator
from usage_engine import (
    AccessToken,
    AuthenticationError,
    TokenProvider,
    TokenStore,
    TokenUnavailableError,
    UsageEngineApiError,
    UsageEngineClient,
    encode_token,
)
from usage_engine.metering import METERS_PATH
from usage_engine.refresh_requester import RefreshResult
from usage_engine.retrying_http import bounded_retry, retrying_session
from usage_engine.secrets_manager import SecretsManagerSecret


class FakeSecrets:
    def __init__(self) -> None:
        self.value: str | None = None
        self.reads = 0

    def get_secret_value(self, SecretId: str) -> dict[str, Any]:  # noqa: N803 - boto3's spelling
        self.reads += 1
        if self.value is None:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "ResourceNotFoundException"}}, "GetSecretValue")
        return {"SecretString": self.value}


class FakeRefresher:
    """Plays the refresher: answers `busy` a number of times, then stores a fresh token."""

    def __init__(self, secrets: FakeSecrets, emulator: UsageEngineEmulator, busy: int = 0) -> None:
        self.secrets = secrets
        self.emulator = emulator
        self.busy = busy
        self.calls: list[tuple[str, str | None]] = []

    def request(self, reason: str, token_fingerprint: str | None = None) -> RefreshResult:
        self.calls.append((reason, token_fingerprint))
        if self.busy:
            self.busy -= 1
            return "busy"
        self.secrets.value = encode_token(issue(self.emulator))
        return "refreshed"


def issue(emulator: UsageEngineEmulator) -> AccessToken:
    import time

    import requests

    response = requests.post(
        emulator.token_url,
        data={
            "client_id": "unit",
            "client_secret": "unit-secret-123",
            "grant_type": "client_credentials",
            "audience": emulator.audience,
        },
        timeout=5,
    )
    body = response.json()
    now = int(time.time())
    return AccessToken(value=body["access_token"], expires_at=now + body["expires_in"], issued_at=now)


@pytest.fixture
def emulator(emulator_server: UsageEngineEmulator) -> UsageEngineEmulator:
    emulator_server.reset()
    emulator_server.add_client("unit", "unit-secret-123")
    return emulator_server


def client_for(
    emulator: UsageEngineEmulator, secrets: FakeSecrets, refresher: FakeRefresher | None
) -> UsageEngineClient:
    tokens = TokenProvider(TokenStore(SecretsManagerSecret(secrets, "token")))  # type: ignore[arg-type]
    return UsageEngineClient(emulator.base_url, tokens, refresher=refresher, sleep=lambda _: None)


def test_missing_token_is_fetched_on_demand(emulator: UsageEngineEmulator) -> None:
    secrets = FakeSecrets()
    refresher = FakeRefresher(secrets, emulator)
    client = client_for(emulator, secrets, refresher)
    assert client.request("GET", METERS_PATH).json() == {"meters": []}
    assert refresher.calls == [("expired", None)]


def test_busy_refresher_is_waited_for(emulator: UsageEngineEmulator) -> None:
    secrets = FakeSecrets()
    refresher = FakeRefresher(secrets, emulator, busy=3)
    client = client_for(emulator, secrets, refresher)
    assert client.request("GET", METERS_PATH).status_code == 200
    assert len(refresher.calls) == 4


def test_a_refresher_busy_for_too_long_is_token_unavailable(emulator: UsageEngineEmulator) -> None:
    secrets = FakeSecrets()
    client = client_for(emulator, secrets, FakeRefresher(secrets, emulator, busy=100))
    with pytest.raises(TokenUnavailableError, match="no valid token after asking the refresher"):
        client.request("GET", METERS_PATH)


def test_rejected_token_is_reported_with_its_fingerprint(emulator: UsageEngineEmulator) -> None:
    secrets = FakeSecrets()
    refresher = FakeRefresher(secrets, emulator)
    client = client_for(emulator, secrets, refresher)
    client.request("GET", METERS_PATH)
    old = client.tokens.get()
    emulator.revoke_all_tokens()
    assert client.request("GET", METERS_PATH).status_code == 200
    assert refresher.calls[-1] == ("rejected", old.fingerprint)
    assert client.tokens.get().value != old.value
    assert client.drain_call_counts() == {"2xx": 2, "4xx": 1}
    assert client.drain_call_counts() == {}


def test_caller_headers_survive_the_401_retry(emulator: UsageEngineEmulator) -> None:
    secrets = FakeSecrets()
    refresher = FakeRefresher(secrets, emulator)
    client = client_for(emulator, secrets, refresher)
    client.request("GET", METERS_PATH)
    emulator.revoke_all_tokens()
    headers = {"X-Correlation-Id": "abc", "Authorization": "Bearer not-this-one"}
    response = client.request("GET", METERS_PATH, headers=headers)
    assert response.status_code == 200
    assert response.request.headers["X-Correlation-Id"] == "abc"
    assert response.request.headers["Authorization"] == client.tokens.get().authorization
    assert headers == {"X-Correlation-Id": "abc", "Authorization": "Bearer not-this-one"}


def test_second_401_with_a_fresh_token_raises(emulator: UsageEngineEmulator) -> None:
    secrets = FakeSecrets()
    refresher = FakeRefresher(secrets, emulator)
    client = client_for(emulator, secrets, refresher)
    emulator.fail_next_api_requests(2, 401)
    with pytest.raises(AuthenticationError) as caught:
        client.request("GET", METERS_PATH)
    assert caught.value.status == 401
    assert len(refresher.calls) == 2  # "expired" (no token at first), then "rejected" once: no loop
    assert emulator.api_requests == 2


def test_idempotent_requests_are_retried_posts_are_not(emulator: UsageEngineEmulator) -> None:
    secrets = FakeSecrets()
    client = client_for(emulator, secrets, FakeRefresher(secrets, emulator))
    emulator.fail_next_api_requests(2, 503)
    assert client.request("GET", METERS_PATH).status_code == 200
    assert emulator.api_requests == 3
    emulator.fail_next_api_requests(1, 503)
    with pytest.raises(UsageEngineApiError) as caught:
        client.request("POST", METERS_PATH, json={})
    assert caught.value.status == 503
    assert caught.value.retryable
    assert emulator.api_requests == 4


def test_error_reason_is_short_and_from_the_body(emulator: UsageEngineEmulator) -> None:
    secrets = FakeSecrets()
    client = client_for(emulator, secrets, FakeRefresher(secrets, emulator))
    with pytest.raises(UsageEngineApiError) as caught:
        client.request("POST", METERS_PATH, json={"domain": "acme"})
    assert caught.value.status == 400
    assert not caught.value.retryable
    assert "externalRef" in caught.value.reason or "domain" in caught.value.reason


@pytest.mark.parametrize("path", ["https://evil.example/steal", "//evil.example/x", "api/no-slash"])
def test_only_relative_paths_so_the_token_never_leaves_the_api_host(emulator: UsageEngineEmulator, path: str) -> None:
    secrets = FakeSecrets()
    client = client_for(emulator, secrets, FakeRefresher(secrets, emulator))
    with pytest.raises(ValueError, match="relative"):
        client.request("GET", path)
    assert secrets.reads == 0


def test_connection_failure_is_a_retryable_api_error() -> None:
    secrets = FakeSecrets()
    secrets.value = encode_token(AccessToken(value="abc.def.ghi", expires_at=4_000_000_000, issued_at=1))
    tokens = TokenProvider(TokenStore(SecretsManagerSecret(secrets, "token")))  # type: ignore[arg-type]
    no_backoff = retrying_session(bounded_retry(max_retries=2, methods={"POST"}, statuses=(), backoff_factor=0))
    client = UsageEngineClient("http://127.0.0.1:9", tokens, session=no_backoff)
    with pytest.raises(UsageEngineApiError) as caught:
        client.request("POST", METERS_PATH, json={})
    assert caught.value.status is None
    assert caught.value.retryable
    assert "abc.def.ghi" not in str(caught.value)
