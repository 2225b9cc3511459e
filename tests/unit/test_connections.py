"""Several connections in one consumer: each named connection's variables, and each connection's own client,
token provider and hold-off, with fakes at the boundary (the token secrets, the refresher functions, HTTP)."""

from __future__ import annotations

import io
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from botocore.exceptions import ClientError

from usage_engine import (
    AccessToken,
    Components,
    ConfigurationError,
    ConsumerSettings,
    RefreshHoldOffError,
    RefreshUnavailableError,
    TokenProvider,
    UsageEngineClient,
    UsageMeteringApi,
    components,
    encode_token,
    reset_components,
)
from usage_engine.settings import (
    DEFAULT_API_URL,
    DEFAULT_TOKEN_EXPIRY_SKEW_SECONDS,
    MAX_TOKEN_EXPIRY_SKEW_SECONDS,
    consumer_variables,
)

NOW = 1_800_000_000.0
EU_URL = "https://eu.usage-engine.test"
US_URL = "https://us.usage-engine.test"

US = {
    "USAGE_ENGINE_US_TOKEN_SECRET_ID": "us/token",
    "USAGE_ENGINE_US_API_URL": US_URL + "/",
    "USAGE_ENGINE_US_REFRESHER_FUNCTION": "us-refresher",
    "USAGE_ENGINE_US_TOKEN_EXPIRY_SKEW_SECONDS": "30",
}
DEFAULT = {
    "TOKEN_SECRET_ID": "eu/token",
    "USAGE_ENGINE_API_URL": EU_URL,
    "TOKEN_REFRESHER_FUNCTION": "eu-refresher",
}


# --- the variables ---------------------------------------------------------------------------------------------


def test_a_named_connection_reads_its_four_variables() -> None:
    settings = ConsumerSettings.from_env({**DEFAULT, **US}, connection="us")
    assert settings == ConsumerSettings(
        token_secret_id="us/token", api_url=US_URL, refresher_function="us-refresher", token_expiry_skew_seconds=30
    )


def test_the_variable_names_of_a_connection() -> None:
    names = consumer_variables("Sandbox_2")
    assert (names.token_secret_id, names.api_url, names.refresher_function, names.token_expiry_skew_seconds) == (
        "USAGE_ENGINE_SANDBOX_2_TOKEN_SECRET_ID",
        "USAGE_ENGINE_SANDBOX_2_API_URL",
        "USAGE_ENGINE_SANDBOX_2_REFRESHER_FUNCTION",
        "USAGE_ENGINE_SANDBOX_2_TOKEN_EXPIRY_SKEW_SECONDS",
    )
    assert consumer_variables(None).token_secret_id == "TOKEN_SECRET_ID"


def test_the_refresher_and_the_skew_of_a_named_connection_are_optional() -> None:
    env = {"USAGE_ENGINE_US_TOKEN_SECRET_ID": "us/token", "USAGE_ENGINE_US_API_URL": US_URL}
    settings = ConsumerSettings.from_env(env, connection="us")
    assert settings.refresher_function is None
    assert settings.token_expiry_skew_seconds == DEFAULT_TOKEN_EXPIRY_SKEW_SECONDS


@pytest.mark.parametrize("missing", ["USAGE_ENGINE_US_TOKEN_SECRET_ID", "USAGE_ENGINE_US_API_URL"])
def test_a_missing_required_variable_is_named_exactly(missing: str) -> None:
    # The default connection's variables are there: a named connection never falls back to them.
    env = {**DEFAULT, **{k: v for k, v in US.items() if k != missing}}
    with pytest.raises(ConfigurationError, match=missing) as caught:
        ConsumerSettings.from_env(env, connection="us")
    assert caught.value.variable == missing


def test_a_blank_required_variable_counts_as_missing() -> None:
    with pytest.raises(ConfigurationError) as caught:
        ConsumerSettings.from_env({**US, "USAGE_ENGINE_US_TOKEN_SECRET_ID": "  "}, connection="us")
    assert caught.value.variable == "USAGE_ENGINE_US_TOKEN_SECRET_ID"


@pytest.mark.parametrize("name", ["us", "Us", "US", "uS"])
def test_connection_names_are_case_insensitive(name: str) -> None:
    assert ConsumerSettings.from_env(US, connection=name) == ConsumerSettings.from_env(US, connection="US")


@pytest.mark.parametrize("name", ["", "eu-west", "us east", "US ", "us\n", "us.eu", "usé", "a" * 33, "$(id)"])
def test_an_invalid_connection_name_is_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match=r"connection name .* is not 1-32 letters, digits or underscores"):
        ConsumerSettings.from_env({**DEFAULT, **US}, connection=name)


def test_the_longest_name_is_accepted() -> None:
    name = "A_1" + "b" * 29
    env = {f"USAGE_ENGINE_{name.upper()}_TOKEN_SECRET_ID": "t", f"USAGE_ENGINE_{name.upper()}_API_URL": US_URL}
    assert ConsumerSettings.from_env(env, connection=name).token_secret_id == "t"


@pytest.mark.parametrize("url", ["http://us.usage-engine.test", "ftp://127.0.0.1/", "not a url"])
def test_a_named_api_url_follows_the_default_rules(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ConsumerSettings.from_env({**US, "USAGE_ENGINE_US_API_URL": url}, connection="us")
    assert caught.value.variable == "USAGE_ENGINE_US_API_URL"


def test_a_named_api_url_may_be_plain_http_on_loopback() -> None:
    env = {**US, "USAGE_ENGINE_US_API_URL": "http://127.0.0.1:8080/"}
    assert ConsumerSettings.from_env(env, connection="us").api_url == "http://127.0.0.1:8080"


@pytest.mark.parametrize("value", ["abc", "-1", str(MAX_TOKEN_EXPIRY_SKEW_SECONDS + 1)])
def test_a_named_skew_follows_the_default_rules(value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ConsumerSettings.from_env({**US, "USAGE_ENGINE_US_TOKEN_EXPIRY_SKEW_SECONDS": value}, connection="us")
    assert caught.value.variable == "USAGE_ENGINE_US_TOKEN_EXPIRY_SKEW_SECONDS"


def test_the_default_connection_is_unchanged() -> None:
    env = {**DEFAULT, **US, "TOKEN_EXPIRY_SKEW_SECONDS": "45"}
    expected = ConsumerSettings("eu/token", EU_URL, "eu-refresher", 45)
    assert ConsumerSettings.from_env(env) == ConsumerSettings.from_env(env, connection=None) == expected
    # Its API URL keeps its default, and the named connections' variables do not stand in for its own.
    assert ConsumerSettings.from_env({"TOKEN_SECRET_ID": "t"}).api_url == DEFAULT_API_URL
    with pytest.raises(ConfigurationError) as caught:
        ConsumerSettings.from_env(US)
    assert caught.value.variable == "TOKEN_SECRET_ID"


# --- one client, provider and hold-off per connection ----------------------------------------------------------


class Clock:
    """Wall and monotonic time in one: sleeping moves it."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def token(value: str, *, expires_in: float = 3600) -> AccessToken:
    return AccessToken(value=value, expires_at=int(NOW + expires_in), issued_at=int(NOW - 60))


class Secrets:
    """Secrets Manager: secret id -> its current value, and the reads of each."""

    def __init__(self, values: dict[str, AccessToken]) -> None:
        self.values = {secret_id: encode_token(value) for secret_id, value in values.items()}
        self.reads: dict[str, int] = {}

    def store(self, secret_id: str, value: AccessToken) -> None:
        self.values[secret_id] = encode_token(value)

    def get_secret_value(self, SecretId: str) -> dict[str, Any]:  # noqa: N803 - boto3's spelling
        self.reads[SecretId] = self.reads.get(SecretId, 0) + 1
        if SecretId not in self.values:
            raise ClientError({"Error": {"Code": "ResourceNotFoundException"}}, "GetSecretValue")
        return {"SecretString": self.values[SecretId]}


class Refresher:
    """One refresher function: stores `next_token` in its stack's secret, or fails as when its IdP is down."""

    def __init__(self, secrets: Secrets, secret_id: str, prefix: str) -> None:
        self.secrets = secrets
        self.secret_id = secret_id
        self.prefix = prefix
        self.events: list[dict[str, Any]] = []
        self.idp_down = False
        self.minted = 0

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        self.events.append(event)
        if self.idp_down:
            raise RuntimeError("IdpUnavailableError")
        self.minted += 1
        fresh = token(f"{self.prefix}.{self.minted}")
        self.secrets.store(self.secret_id, fresh)
        return {"refreshed": True, "reason": "rejected", "token_fingerprint": fresh.fingerprint}


class Lambda:
    """The Lambda Invoke API for the refresher functions, by name."""

    def __init__(self, functions: dict[str, Refresher]) -> None:
        self.functions = functions

    def invoke(self, FunctionName: str, InvocationType: str, Payload: bytes) -> dict[str, Any]:  # noqa: N803
        function = self.functions[FunctionName]
        try:
            result = function(json.loads(Payload))
        except RuntimeError as error:
            body = {"errorType": str(error), "errorMessage": "IdP down", "stackTrace": []}
            return {"StatusCode": 200, "FunctionError": "Unhandled", "Payload": io.BytesIO(json.dumps(body).encode())}
        return {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(result).encode())}


class Api:
    """Both APIs behind one HTTP session: each accepts only the tokens its own stack's IdP issued."""

    def __init__(self, prefix_of_host: dict[str, str]) -> None:
        self.prefix_of_host = prefix_of_host
        self.seen: list[tuple[str, str]] = []
        self.reject_next: dict[str, int] = {}

    def request(self, method: str, url: str, *, headers: dict[str, str], **_: Any) -> requests.Response:
        host = urlsplit(url).hostname or ""
        value = headers["Authorization"].removeprefix("Bearer ")
        self.seen.append((host, value))
        accepted = value.startswith(self.prefix_of_host[host] + ".")
        if self.reject_next.get(host):
            self.reject_next[host] -= 1
            accepted = False
        return response(200 if accepted else 401, {"meters": [{"host": host}]} if accepted else {"error": "x"})


def response(status: int, body: Any) -> requests.Response:
    answer = requests.Response()
    answer.status_code = status
    answer._content = json.dumps(body).encode()
    answer.raw = io.BytesIO()  # what close() closes
    answer.encoding = "utf-8"
    return answer


class World:
    """Two stacks (EU: the default connection, US: a named one) and one consumer container using both."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, eu: AccessToken, us: AccessToken) -> None:
        for name, value in {**DEFAULT, **US}.items():
            monkeypatch.setenv(name, value)
        self.clock = Clock()
        self.secrets = Secrets({"eu/token": eu, "us/token": us})
        self.refreshers = {
            "eu-refresher": Refresher(self.secrets, "eu/token", "eu"),
            "us-refresher": Refresher(self.secrets, "us/token", "us"),
        }
        self.api = Api({"eu.usage-engine.test": "eu", "us.usage-engine.test": "us"})
        self.container = Components(
            clock=self.clock,
            sleep=self.clock.sleep,
            secrets_manager=self.secrets,  # type: ignore[arg-type]
            lambda_client=Lambda(self.refreshers),  # type: ignore[arg-type]
            client_options={"session": self.api},
        )

    @property
    def eu(self) -> UsageEngineClient:
        return self.container.client_from_env()

    @property
    def us(self) -> UsageEngineClient:
        return self.container.client_from_env("us")

    def list_meters(self, client: UsageEngineClient) -> list[dict[str, Any]]:
        return UsageMeteringApi(client).list_meters()


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    return World(monkeypatch, eu=token("eu.0"), us=token("us.0"))


def test_each_connection_has_its_own_client_provider_and_recovery(world: World) -> None:
    eu, us = world.eu, world.us
    assert eu is not us
    assert eu.tokens is not us.tokens
    assert eu.recovery is not us.recovery
    assert (eu.base_url, us.base_url) == (EU_URL, US_URL)
    # Warm invocations, any spelling of the name: the same objects.
    assert world.container.client_from_env("US") is us
    assert world.container.client_from_env() is eu
    assert world.container.provider_from_env("Us") is us.tokens
    assert world.container.provider_from_env() is eu.tokens


def test_the_from_env_shortcuts_take_a_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**DEFAULT, **US}.items():
        monkeypatch.setenv(name, value)
    reset_components()
    try:
        us = components().client_from_env("us")
        assert UsageEngineClient.from_env("us") is us
        assert UsageEngineClient.from_env() is components().client_from_env() is not us
        assert TokenProvider.from_env("us") is us.tokens
        assert TokenProvider.from_env() is not us.tokens
        assert UsageMeteringApi.from_env("us")._client is us
    finally:
        reset_components()


def test_connections_naming_one_token_secret_share_its_provider_only(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(monkeypatch, eu=token("eu.0"), us=token("us.0"))
    monkeypatch.setenv("USAGE_ENGINE_SANDBOX_TOKEN_SECRET_ID", "eu/token")
    monkeypatch.setenv("USAGE_ENGINE_SANDBOX_API_URL", "https://sandbox.usage-engine.test")
    sandbox = world.container.client_from_env("sandbox")
    assert sandbox.tokens is world.eu.tokens
    assert sandbox is not world.eu
    assert sandbox.recovery is not world.eu.recovery


def test_each_call_carries_its_own_connections_token(world: World) -> None:
    assert world.list_meters(world.eu) == [{"host": "eu.usage-engine.test"}]
    assert world.list_meters(world.us) == [{"host": "us.usage-engine.test"}]
    assert world.api.seen == [("eu.usage-engine.test", "eu.0"), ("us.usage-engine.test", "us.0")]
    assert world.secrets.reads == {"eu/token": 1, "us/token": 1}


def test_an_idp_outage_behind_one_connection_holds_off_that_connection_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # Both stored tokens have expired; the US IdP is down, the EU one is not.
    world = World(monkeypatch, eu=token("eu.0", expires_in=-10), us=token("us.0", expires_in=-10))
    us_refresher, eu_refresher = world.refreshers["us-refresher"], world.refreshers["eu-refresher"]
    us_refresher.idp_down = True

    with pytest.raises(RefreshUnavailableError):
        world.list_meters(world.us)
    assert world.us.recovery.holding_off()
    with pytest.raises(RefreshHoldOffError):
        world.list_meters(world.us)
    assert len(us_refresher.events) == 1  # held off: the second call asked no one

    # Meanwhile the EU connection refreshes its own expired token and calls its API.
    assert not world.eu.recovery.holding_off()
    assert world.list_meters(world.eu) == [{"host": "eu.usage-engine.test"}]
    assert [event["reason"] for event in eu_refresher.events] == ["expired"]
    assert world.api.seen == [("eu.usage-engine.test", "eu.1")]
    assert world.us.recovery.holding_off()
    assert not world.eu.recovery.holding_off()


def test_a_401_on_one_connection_heals_that_connection_only(world: World) -> None:
    world.list_meters(world.eu)
    world.list_meters(world.us)
    eu_token = world.eu.tokens.peek()
    reads_before = dict(world.secrets.reads)
    world.api.reject_next["us.usage-engine.test"] = 1

    assert world.list_meters(world.us) == [{"host": "us.usage-engine.test"}]

    us_events = world.refreshers["us-refresher"].events
    assert [event["reason"] for event in us_events] == ["rejected"]
    assert us_events[0]["token_fingerprint"] == token("us.0").fingerprint
    assert world.api.seen[-2:] == [("us.usage-engine.test", "us.0"), ("us.usage-engine.test", "us.1")]
    # The EU connection saw nothing of it: no refresh, no read, the same cached token for its next call.
    assert world.refreshers["eu-refresher"].events == []
    assert world.secrets.reads["eu/token"] == reads_before["eu/token"]
    assert world.eu.tokens.peek() is eu_token
    world.list_meters(world.eu)
    assert world.api.seen[-1] == ("eu.usage-engine.test", "eu.0")
    assert world.secrets.reads["eu/token"] == reads_before["eu/token"]
