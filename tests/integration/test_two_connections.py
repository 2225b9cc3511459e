"""Two bundle stacks side by side (say an EU and a US tenant) and ONE consumer using both through the layer.

Each stack has its own token and credentials secrets in moto, its own Usage Engine emulator (its own IdP and
API: each emulator signs with its own key, so it answers 401 to the other's tokens) and its own refresher
function on the local Lambda endpoint (reserved concurrency 1 each), reached through boto3's lambda.invoke.
The consumer's default connection is the EU stack (TOKEN_SECRET_ID, ...), its "us" connection the US stack
(USAGE_ENGINE_US_TOKEN_SECRET_ID, ...).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
import time_machine

from local import lambda_endpoint
from local.environment import scoped_environment
from local.lambda_endpoint import LocalLambdaEndpoint
from local.lambda_runtime import load_event
from local.usage_engine_emulator import UsageEngineEmulator
from tests.conftest import REFRESHER_NAME, Deployment
from usage_engine import (
    RefreshHoldOffError,
    RefreshUnavailableError,
    UsageEngineClient,
    UsageMeteringApi,
    fingerprint,
)
from usage_engine.metering import METERS_PATH

US_CLIENT_ID = "us-tenant-client"
US_CLIENT_SECRET = "us-tenant-secret-4c2e8f61a9d7"
US_CREDENTIALS_SECRET = "usage-engine-us/credentials"
US_TOKEN_SECRET = "usage-engine-us/token"
US_REFRESHER = "token-refresher-us"


@pytest.fixture(scope="module")
def us_emulator_server() -> Iterator[UsageEngineEmulator]:
    # Started the way tests/conftest.py starts the EU one: the session's leak guard forbids its secret and tokens.
    with UsageEngineEmulator(clients={US_CLIENT_ID: US_CLIENT_SECRET}, rate_limit=False) as server:
        yield server


@pytest.fixture(scope="module")
def two_refreshers() -> Iterator[LocalLambdaEndpoint]:
    # The same handler deployed twice, each with reserved concurrency 1 as in template.yaml.
    functions = {REFRESHER_NAME: "token_refresher", US_REFRESHER: "token_refresher"}
    with LocalLambdaEndpoint(functions, reserved_concurrency=dict.fromkeys(functions, 1)) as endpoint:
        yield endpoint


@dataclass
class TwoStacks:
    eu: Deployment
    us_emulator: UsageEngineEmulator
    refreshers: LocalLambdaEndpoint
    invocations_before: dict[str, int]

    def invocations(self, function: str) -> int:
        """Invocations of a refresher function in this test (the endpoint serves the whole module)."""
        return self.refreshers.invocations(function) - self.invocations_before[function]

    @property
    def eu_emulator(self) -> UsageEngineEmulator:
        return self.eu.emulator

    def scheduled_run(self, function: str) -> dict[str, Any]:
        """What the schedule does: invoke the stack's refresher (through boto3 and the local Lambda endpoint)."""
        response = boto3.client("lambda").invoke(
            FunctionName=function, Payload=json.dumps(load_event("refresher-scheduled.json")).encode()
        )
        assert response.get("FunctionError") is None
        return dict(json.loads(response["Payload"].read()))


def own_environment(environments: Mapping[str, Mapping[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run each function named in `environments` with those variables on top of the process environment.

    The local endpoint runs every handler in this process with the process environment; in Lambda each of
    the two refresher functions has its own. The lock keeps one invocation's variables from another's (the
    consumer in this test waits for its invoke, so it reads no variable meanwhile)."""
    load = vars(lambda_endpoint)["load_module"]  # the leak-guarded loader tests/conftest.py installs
    lock = threading.Lock()

    def load_with_environment(folder: str) -> Any:
        handler = load(folder).lambda_handler

        def run(event: Any, context: Any) -> Any:
            with lock, scoped_environment(environments.get(context.function_name, {})):
                return handler(event, context)

        return SimpleNamespace(lambda_handler=run)

    monkeypatch.setattr(lambda_endpoint, "load_module", load_with_environment)


@pytest.fixture
def stacks(
    deployment: Deployment,
    us_emulator_server: UsageEngineEmulator,
    two_refreshers: LocalLambdaEndpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[TwoStacks]:
    """The EU stack is `deployment` (its functions' variables are the process environment); the US stack gets
    its own secrets, emulator and refresher; the consumer is configured for both."""
    us = us_emulator_server
    us.reset()
    secrets = boto3.client("secretsmanager")
    secrets.create_secret(
        Name=US_CREDENTIALS_SECRET,
        SecretString=json.dumps({"client_id": US_CLIENT_ID, "client_secret": US_CLIENT_SECRET}),
    )
    secrets.create_secret(Name=US_TOKEN_SECRET, Description="Usage Engine access token (US)")
    own_environment(
        {
            US_REFRESHER: {
                "CREDENTIALS_SECRET_ID": US_CREDENTIALS_SECRET,
                "TOKEN_SECRET_ID": US_TOKEN_SECRET,
                "USAGE_ENGINE_TOKEN_URL": us.token_url,
                "USAGE_ENGINE_AUDIENCE": us.audience,
            }
        },
        monkeypatch,
    )
    consumer = {
        **two_refreshers.environment(),
        "TOKEN_REFRESHER_FUNCTION": REFRESHER_NAME,
        "USAGE_ENGINE_US_TOKEN_SECRET_ID": US_TOKEN_SECRET,
        "USAGE_ENGINE_US_API_URL": us.base_url,
        "USAGE_ENGINE_US_REFRESHER_FUNCTION": US_REFRESHER,
    }
    for name, value in consumer.items():
        monkeypatch.setenv(name, value)
    before = {name: two_refreshers.invocations(name) for name in (REFRESHER_NAME, US_REFRESHER)}
    yield TwoStacks(eu=deployment, us_emulator=us, refreshers=two_refreshers, invocations_before=before)
    us.reset()


def fingerprints(emulator: UsageEngineEmulator) -> set[str]:
    # Tokens are compared by fingerprint: a failing assertion then prints no token.
    return {fingerprint(token) for token in emulator.issued_tokens}


def current_fingerprint(client: UsageEngineClient) -> str:
    token = client.tokens.peek()
    assert token is not None
    return token.fingerprint


def both_refreshed(stacks: TwoStacks) -> tuple[UsageEngineClient, UsageEngineClient]:
    assert stacks.scheduled_run(REFRESHER_NAME)["refreshed"]
    assert stacks.scheduled_run(US_REFRESHER)["refreshed"]
    return UsageEngineClient.from_env(), UsageEngineClient.from_env("us")


def test_one_consumer_calls_both_stacks_each_with_its_own_token(stacks: TwoStacks) -> None:
    eu, us = both_refreshed(stacks)
    assert stacks.eu_emulator.token_requests == stacks.us_emulator.token_requests == 1
    UsageMeteringApi(us).create_meter(domain="acme", external_ref="us-1", meter_type_id="api-calls", user_id="u-1")

    assert UsageMeteringApi.from_env().list_meters() == []
    assert [m["externalRef"] for m in UsageMeteringApi.from_env("us").list_meters()] == ["us-1"]

    # Each emulator saw only its own tokens (a foreign one would have been answered 401).
    assert stacks.eu_emulator.api_status_counts == {200: 1}
    assert stacks.us_emulator.api_status_counts == {201: 1, 200: 1}
    assert current_fingerprint(eu) in fingerprints(stacks.eu_emulator)
    assert current_fingerprint(us) in fingerprints(stacks.us_emulator)
    assert fingerprints(stacks.eu_emulator).isdisjoint(fingerprints(stacks.us_emulator))
    assert (eu.base_url, us.base_url) == (stacks.eu_emulator.base_url, stacks.us_emulator.base_url)


def test_a_401_on_one_connection_heals_that_connection_only(stacks: TwoStacks) -> None:
    eu, us = both_refreshed(stacks)
    assert eu.request("GET", METERS_PATH).status_code == us.request("GET", METERS_PATH).status_code == 200
    eu_before, us_before = current_fingerprint(eu), current_fingerprint(us)

    stacks.us_emulator.fail_next_api_requests(1, 401)
    assert us.request("GET", METERS_PATH).status_code == 200
    assert eu.request("GET", METERS_PATH).status_code == 200

    # The US connection replaced its token through its own refresher; the EU one kept its token.
    assert current_fingerprint(us) != us_before
    assert current_fingerprint(eu) == eu_before
    assert stacks.us_emulator.token_requests == 2
    assert stacks.eu_emulator.token_requests == 1
    assert stacks.invocations(US_REFRESHER) == 2  # scheduled, then rejected
    assert stacks.invocations(REFRESHER_NAME) == 1
    assert stacks.eu_emulator.api_status_counts == {200: 2}
    assert stacks.us_emulator.api_status_counts == {200: 2, 401: 1}


def test_an_idp_outage_behind_one_connection_leaves_the_other_alone(stacks: TwoStacks) -> None:
    eu, us = both_refreshed(stacks)
    # An hour later both stored tokens have expired, and the US IdP is down (every token request: 503).
    with time_machine.travel(time.time() + 3600, tick=True):
        stacks.us_emulator.fail_next_token_requests(100, 503)
        with pytest.raises(RefreshUnavailableError):
            us.request("GET", METERS_PATH)
        assert us.recovery.holding_off()
        with pytest.raises(RefreshHoldOffError):
            us.request("GET", METERS_PATH)

        # The EU connection is not held off: its refresher replaces its expired token and the call succeeds.
        assert not eu.recovery.holding_off()
        assert eu.request("GET", METERS_PATH).status_code == 200
        assert us.recovery.holding_off()

    assert stacks.eu_emulator.token_requests == 2
    assert stacks.invocations(REFRESHER_NAME) == 2  # scheduled, then expired
    assert stacks.invocations(US_REFRESHER) == 2  # scheduled, then the one failed refresh
    assert stacks.us_emulator.api_requests == 0  # no US call went out without a token
    assert stacks.eu_emulator.api_status_counts == {200: 1}
