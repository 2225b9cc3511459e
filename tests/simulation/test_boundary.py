"""The fakes at the AWS and HTTP boundary behave as the services do, and drive the layer's real policies."""

from __future__ import annotations

import pytest

from local.simulation import (
    CLIENT_ID,
    CLIENT_SECRET,
    TOKEN_SECRET,
    Bundle,
    BundleSettings,
    Outage,
    SecretsManagerFake,
    Simulation,
    total_attempts,
)
from usage_engine import ClientCredentials, ClientCredentialsExchange, Components, IdpUnavailableError
from usage_engine.aws_clients import SECRETS_MANAGER_CONFIG
from usage_engine.errors import SecretStoreError
from usage_engine.secrets_manager import SecretsManagerSecret
from usage_engine.settings import DEFAULT_TOKEN_URL


def exchange_in(sim: Simulation, outage: Outage) -> tuple[ClientCredentialsExchange, Bundle]:
    """The refresher container's exchange: the layer's token session and Retry policy on the fake IdP."""
    bundle = Bundle(sim, outages=(outage,))
    return bundle.refresher_components.exchange(), bundle


def secret_in(secrets: SecretsManagerFake, secret_id: str) -> SecretsManagerSecret:
    """A consumer container's view of one secret, wired as the container wires it."""
    sim = secrets.sim
    components = Components(clock=sim.clock, sleep=sim.elapse, secrets_manager=secrets.client("consumer"))  # type: ignore[arg-type]
    return components.secret(secret_id)


def test_idp_503_with_retry_after_is_retried_by_the_layers_retry_policy_with_the_cap() -> None:
    errors: list[IdpUnavailableError] = []
    with Simulation() as sim:
        start = sim.start
        exchange, bundle = exchange_in(sim, Outage(start=start, end=start + 3600, status=503, retry_after=30))

        def fetch() -> None:
            with pytest.raises(IdpUnavailableError) as caught:
                exchange.fetch(
                    ClientCredentials(CLIENT_ID, CLIENT_SECRET), token_url=DEFAULT_TOKEN_URL, audience="https://a/"
                )
            errors.append(caught.value)

        sim.at(start, fetch)
        sim.run()
        # 4 attempts (3 retries), Retry-After 30 capped at 10 s between them.
        assert bundle.usage_engine.idp_requests.total == 4
        assert errors[0].attempts == 4
        assert 30 <= sim.now - start < 32


def test_unreachable_idp_costs_the_connect_timeout_per_attempt_then_fails_typed() -> None:
    with Simulation() as sim:
        start = sim.start
        exchange, bundle = exchange_in(sim, Outage(start=start, end=start + 3600, mode="connect-timeout"))
        failures: list[tuple[str, float]] = []

        def fetch() -> None:
            try:
                exchange.fetch(ClientCredentials(CLIENT_ID, CLIENT_SECRET), token_url=DEFAULT_TOKEN_URL, audience="a")
            except IdpUnavailableError as error:
                failures.append((str(error), sim.clock() - start))

        sim.at(start, fetch)
        sim.run()
        assert bundle.usage_engine.idp_requests.total == 4
        message, took = failures[0]
        assert "connect timeout" in message
        # 4 x 3.05 s connect timeouts plus urllib3's backoff (0, 1, 2 s, each + up to 0.5 s jitter)
        assert 15.2 <= took <= 16.7


def test_throttled_reads_are_retried_with_botocores_backoff_and_counted() -> None:
    with Simulation() as sim:
        secrets = SecretsManagerFake(sim, get_quota=2)
        secrets.create(TOKEN_SECRET, "{}")
        readers = [secret_in(secrets, TOKEN_SECRET) for _ in range(5)]
        results: list[str | None] = []
        for reader in readers:
            sim.at(sim.start + 0.1, lambda reader=reader: results.append(reader.read()))
        sim.run()
    assert results == ["{}"] * 5
    assert secrets.throttled["GetSecretValue"] >= 3
    assert secrets.gets.total == 5 + secrets.throttled["GetSecretValue"]


def test_reads_fail_typed_once_botocores_attempts_are_used_up() -> None:
    with Simulation() as sim:
        secrets = SecretsManagerFake(sim, get_quota=0)
        secrets.create(TOKEN_SECRET, "{}")
        reader = secret_in(secrets, TOKEN_SECRET)
        errors: list[str] = []

        def read() -> None:
            with pytest.raises(SecretStoreError) as caught:
                reader.read()
            errors.append(str(caught.value))

        sim.at(sim.start, read)
        sim.run()
    # As many requests as the layer's SECRETS_MANAGER_CONFIG allows.
    assert secrets.gets.total == total_attempts(SECRETS_MANAGER_CONFIG)
    assert "ThrottlingException" in errors[0]


def test_the_refresher_has_reserved_concurrency_one() -> None:
    with Simulation() as sim:
        bundle = Bundle(sim, outages=(Outage(start=sim.start, end=sim.start + 60, mode="connect-timeout"),))
        client = bundle.refresher.client()
        answers: list[str] = []

        def invoke() -> None:
            try:
                client.invoke(FunctionName="token-refresher", Payload=b'{"reason": "forced"}')
                answers.append("ran")
            except Exception as error:  # noqa: BLE001 - recording which boto3 error the fake raised
                answers.append(type(error).__name__)

        sim.at(sim.start, invoke)
        sim.at(sim.start + 1, invoke)
        sim.run()
    # The first run waits out 4 connect timeouts (~15 s); the second is throttled twice (botocore retries once).
    assert answers == ["ClientError", "ran"] or answers == ["ran", "ClientError"]
    assert bundle.refresher.throttles["sync"] == 2


@pytest.mark.parametrize("on_demand", [True, False])
def test_a_consumer_container_asks_the_refresher_only_when_its_settings_name_it(on_demand: bool) -> None:
    """The token secret is empty: with TOKEN_REFRESHER_FUNCTION set (Components gives the client a requester)
    the first call runs the refresher on demand and succeeds; without it the call fails, typed."""
    with Simulation() as sim:
        bundle = Bundle(sim, settings=BundleSettings(on_demand_refresh=on_demand))
        consumer = bundle.consumer("c0")
        sim.at(sim.start, consumer.invoke)
        sim.run()
    assert consumer.client is consumer.components.client(bundle.consumer_settings)
    assert consumer.client.tokens is consumer.components.provider(bundle.consumer_settings)
    if on_demand:
        assert (consumer.stats.succeeded, dict(bundle.refresher.runs)) == (1, {"on-demand:refreshed": 1})
        assert bundle.usage_engine.idp_issued.total == 1
    else:
        assert dict(consumer.stats.failures) == {"TokenUnavailableError": 1}
        assert not bundle.refresher.runs
        assert bundle.usage_engine.idp_requests.total == 0
