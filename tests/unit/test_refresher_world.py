"""A refresher's world on a virtual clock: the REAL TokenRefresher (built by Components, with the real
ClientCredentialsExchange, TokenStore and CredentialsSource) over fakes at the AWS and HTTP boundary that
count what production pays for: IdP requests and PutSecretValue calls (secret versions).

The other test_refresher_* modules drive it; the tests here pin the fakes' own behaviour to boto3's and
requests' so those counts mean something."""

from __future__ import annotations

import io
import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import requests
from botocore.exceptions import ClientError

from usage_engine import (
    ClientCredentialsExchange,
    Components,
    RefresherSettings,
    RefreshFailedError,
    RefreshOutcome,
    RefreshRequest,
    TokenRefresher,
)

CREDENTIALS_SECRET = "usage-engine/credentials"
TOKEN_SECRET = "usage-engine/token"
START = 1_800_000_000.0
SETTINGS = RefresherSettings(
    credentials_secret_id=CREDENTIALS_SECRET,
    token_secret_id=TOKEN_SECRET,
    token_url="https://idp.example.test/oauth/token",
    audience="https://api.example.test/",
)
GOOD_CREDENTIALS = {"client_id": "client-1", "client_secret": "not-a-real-secret-1"}


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class FakeSecretsManager:
    """GetSecretValue/PutSecretValue as boto3 answers them: every put is a new AWSCURRENT version."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._versions: dict[str, list[tuple[str, str]]] = {}
        self.calls: Counter[str] = Counter()
        # When each PutSecretValue on the token secret happened: the versions the refresher created.
        self.token_puts: list[float] = []
        self._next = 0

    def put(self, secret_id: str, value: str) -> str:
        self._next += 1
        version_id = str(uuid.UUID(int=self._next))
        self._versions.setdefault(secret_id, []).append((version_id, value))
        return version_id

    def get_secret_value(self, *, SecretId: str, **_: Any) -> dict[str, Any]:  # noqa: N803 - boto3's names
        self.calls["GetSecretValue"] += 1
        versions = self._versions.get(SecretId)
        if not versions:
            error = {"Error": {"Code": "ResourceNotFoundException", "Message": "no current version"}}
            raise ClientError(error, "GetSecretValue")  # type: ignore[arg-type]
        version_id, value = versions[-1]
        return {"Name": SecretId, "SecretString": value, "VersionId": version_id}

    def put_secret_value(self, *, SecretId: str, SecretString: str, **_: Any) -> dict[str, Any]:  # noqa: N803
        self.calls["PutSecretValue"] += 1
        if SecretId == TOKEN_SECRET:
            self.token_puts.append(self._clock())
        return {"Name": SecretId, "VersionId": self.put(SecretId, SecretString)}

    def current(self, secret_id: str) -> dict[str, Any]:
        return dict(json.loads(self._versions[secret_id][-1][1]))


class FakeIdp:
    """The token endpoint behind a requests session: `status` 200 issues a one-hour token, others answer an
    OAuth error body. No urllib3 retries: each post is one IdP request."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.status = 200
        self.error = "invalid_client"
        self.expires_in = 3600
        self.requests: list[float] = []

    def post(self, url: str, **_: Any) -> requests.Response:
        self.requests.append(self._clock())
        response = requests.Response()
        response.status_code = self.status
        response.url = url
        if self.status == 200:
            body: dict[str, Any] = {
                "access_token": f"fake.{len(self.requests):06d}.token",
                "token_type": "Bearer",
                "expires_in": self.expires_in,
            }
        else:
            body = {"error": self.error}
        response.raw = io.BytesIO(json.dumps(body).encode())
        return response


@dataclass
class World:
    clock: Clock = field(default_factory=Clock)
    aws: FakeSecretsManager = field(init=False)
    idp: FakeIdp = field(init=False)
    container: Components = field(init=False)

    def __post_init__(self) -> None:
        self.aws = FakeSecretsManager(self.clock)
        self.idp = FakeIdp(self.clock)
        self.aws.put(CREDENTIALS_SECRET, json.dumps(GOOD_CREDENTIALS))
        self.recycle()

    def recycle(self) -> None:
        """A new refresher container: what it remembers in memory is gone, the secrets are not."""
        exchange = ClientCredentialsExchange(session=cast(requests.Session, self.idp), clock=self.clock)
        self.container = Components(clock=self.clock, secrets_manager=cast(Any, self.aws), exchange=exchange)

    def refresher(self, settings: RefresherSettings = SETTINGS) -> TokenRefresher:
        # As the handler does: a refresher per invocation, from the container's components.
        return self.container.refresher(settings)

    def run(self, reason: str = "scheduled", fingerprint: str | None = None) -> RefreshOutcome | RefreshFailedError:
        try:
            return self.refresher().run(RefreshRequest(reason, fingerprint))  # type: ignore[arg-type]
        except RefreshFailedError as error:
            return error

    def stored_fingerprint(self) -> str:
        token = self.container.token_store(TOKEN_SECRET).load().token
        assert token is not None
        return token.fingerprint

    def new_credentials(self, document: dict[str, str] | None = None) -> None:
        """An operator stores credentials (a new version), as `make set-credentials` does."""
        self.aws.put(CREDENTIALS_SECRET, json.dumps(document or GOOD_CREDENTIALS))


def in_window(times: list[float], start: float, seconds: float = 3600) -> int:
    return sum(1 for t in times if start <= t < start + seconds)


def busiest_hour(times: list[float]) -> int:
    """The most events in any one-hour window (each window starts at an event)."""
    return max((in_window(times, t) for t in times), default=0)


# --- the fakes behave like the real boundary -------------------------------------------------------------------


def test_a_secret_without_a_value_answers_resource_not_found_and_every_put_is_a_new_version() -> None:
    world = World()
    with pytest.raises(ClientError) as caught:
        world.aws.get_secret_value(SecretId=TOKEN_SECRET)
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"
    first = world.aws.put_secret_value(SecretId=TOKEN_SECRET, SecretString="{}")["VersionId"]
    second = world.aws.put_secret_value(SecretId=TOKEN_SECRET, SecretString="{}")["VersionId"]
    assert first != second
    assert world.aws.get_secret_value(SecretId=TOKEN_SECRET)["VersionId"] == second
    assert world.aws.calls["PutSecretValue"] == 2


def test_the_fake_idp_issues_tokens_through_the_real_exchange_and_counts_each_request() -> None:
    world = World()
    outcome = world.run()
    assert isinstance(outcome, RefreshOutcome)
    assert (outcome.refreshed, outcome.reason, outcome.expires_at) == (True, "missing", int(START) + 3600)
    assert world.idp.requests == [START]
    assert world.aws.token_puts == [START]
    world.idp.status = 401
    world.clock.now += 3000
    failed = world.run()
    assert isinstance(failed, RefreshFailedError)
    assert "invalid_client" in str(failed)
    assert len(world.idp.requests) == 2
