"""The composition root's AWS clients and the meter events' parts, without AWS: each client is created once
per container with the layer's configuration, the deadline-bounded ones once per whole second (at least 1),
an injected client is used as it is, and the dead-letter queue and state table are wired to them."""

from __future__ import annotations

from typing import Any

import pytest

from usage_engine import ClientCredentialsExchange, Components, ConsumerSettings, RefresherSettings
from usage_engine.aws_clients import (
    DYNAMODB_CONFIG,
    DYNAMODB_FULL_WAIT_SECONDS,
    LAMBDA_CONFIG,
    LAMBDA_FULL_WAIT_SECONDS,
    SECRETS_MANAGER_CONFIG,
    SECRETS_MANAGER_FULL_WAIT_SECONDS,
    SQS_CONFIG,
    bounded_config,
    bounded_lambda_config,
)
from usage_engine.dead_letter import DeadLetterQueue
from usage_engine.meter_state import MeterStateTable


@pytest.fixture(autouse=True)
def _offline_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_DYNAMODB"):
        monkeypatch.delenv(name, raising=False)


def options(client: Any) -> Any:
    return client.meta.config


def same_timeouts(client: Any, config: Any) -> bool:
    mine = options(client)
    return (mine.connect_timeout, mine.read_timeout, mine.retries) == (
        config.connect_timeout,
        config.read_timeout,
        config.retries,
    )


@pytest.mark.parametrize(
    ("method", "service", "config"),
    [("sqs", "sqs", SQS_CONFIG), ("dynamodb", "dynamodb", DYNAMODB_CONFIG)],
)
def test_each_client_is_made_once_with_the_layers_configuration(method: str, service: str, config: Any) -> None:
    components = Components()
    client = getattr(components, method)()
    assert client is getattr(components, method)()
    assert client.meta.service_model.service_name == service
    assert same_timeouts(client, config)


@pytest.mark.parametrize(
    ("method", "service", "bounded"),
    [
        ("secrets_manager_within", "secretsmanager", lambda s: bounded_config(SECRETS_MANAGER_CONFIG, s)),
        ("dynamodb_within", "dynamodb", lambda s: bounded_config(DYNAMODB_CONFIG, s)),
        ("lambda_client_within", "lambda", bounded_lambda_config),
    ],
)
def test_a_bounded_client_per_whole_second_and_at_least_one(method: str, service: str, bounded: Any) -> None:
    components = Components()
    within = getattr(components, method)
    twenty = within(20.9)
    assert twenty is within(20.0)
    assert twenty.meta.service_model.service_name == service
    assert same_timeouts(twenty, bounded(20))
    assert within(19.9) is not twenty
    assert same_timeouts(within(19.9), bounded(19))
    tiny = within(0.2)
    assert tiny is within(1.0)
    assert same_timeouts(tiny, bounded(1))


@pytest.mark.parametrize(
    ("method", "keyword"),
    [
        ("secrets_manager_within", "secrets_manager"),
        ("dynamodb_within", "dynamodb"),
        ("lambda_client_within", "lambda_client"),
    ],
)
def test_an_injected_client_is_used_whatever_the_deadline(method: str, keyword: str) -> None:
    injected = object()
    components = Components(**{keyword: injected})  # type: ignore[arg-type]
    assert getattr(components, method)(3.0) is injected


def test_the_unbounded_clients_are_the_full_configurations() -> None:
    components = Components()
    assert same_timeouts(components.secrets_manager(), SECRETS_MANAGER_CONFIG)
    assert same_timeouts(components.lambda_client(), LAMBDA_CONFIG)
    assert components.secrets_manager_within(100) is not components.secrets_manager()


def test_the_dead_letter_queue_sends_with_the_containers_sqs_client() -> None:
    components = Components()
    queue = components.dead_letter_queue("https://sqs.example/q")
    assert isinstance(queue, DeadLetterQueue)
    assert queue.queue_url == "https://sqs.example/q"
    assert queue._client is components.sqs()


def test_the_state_table_uses_the_containers_dynamodb_clock_sleep_and_bounded_clients() -> None:
    slept: list[float] = []
    components = Components(clock=lambda: 5.0, sleep=slept.append)
    table = components.meter_state_table("meter-state")
    assert isinstance(table, MeterStateTable)
    assert table.table_name == "meter-state"
    assert table._clients.client is components.dynamodb()
    assert table._clock() == 5.0
    table._sleep(0.25)
    assert slept == [0.25]
    # Below its full wait the table gets a client bounded by the time left.
    assert table._clients.for_now("x", min_seconds=0) is components.dynamodb()
    assert table._clients._within is not None
    assert table._clients._within(9.5) is components.dynamodb_within(9)
    assert table._clients._full_wait == DYNAMODB_FULL_WAIT_SECONDS


# --- what each part is built with --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keyword", "method"),
    [
        ("secrets_manager", "secrets_manager"),
        ("lambda_client", "lambda_client"),
        ("sqs", "sqs"),
        ("dynamodb", "dynamodb"),
    ],
)
def test_an_injected_client_is_the_one_used(keyword: str, method: str) -> None:
    injected = object()
    assert getattr(Components(**{keyword: injected}), method)() is injected  # type: ignore[arg-type]


def test_the_secrets_manager_and_lambda_clients_are_made_once() -> None:
    components = Components()
    assert components.secrets_manager() is components.secrets_manager()
    assert components.secrets_manager().meta.service_model.service_name == "secretsmanager"
    assert components.lambda_client() is components.lambda_client()
    assert components.lambda_client().meta.service_model.service_name == "lambda"
    assert components.botocore_session() is components.botocore_session()


def test_a_secret_falls_back_to_a_bounded_client_near_the_deadline() -> None:
    components = Components()
    secret = components.secret("usage-engine/token")
    assert secret.secret_id == "usage-engine/token"
    assert secret._clients.client is components.secrets_manager()
    assert secret._clients._full_wait == SECRETS_MANAGER_FULL_WAIT_SECONDS
    assert secret._clients._within is not None
    assert secret._clients._within(12.0) is components.secrets_manager_within(12)


def test_the_refresh_requester_falls_back_to_a_bounded_client_near_the_deadline() -> None:
    components = Components()
    requester = components.refresh_requester("token-refresher")
    assert requester.function_name == "token-refresher"
    assert requester._clients.client is components.lambda_client()
    assert requester._clients._full_wait == LAMBDA_FULL_WAIT_SECONDS
    assert requester._clients._within is not None
    assert requester._clients._within(12.0) is components.lambda_client_within(12)


def test_the_exchange_is_made_once_on_the_containers_clock() -> None:
    clock = lambda: 123.0  # noqa: E731
    components = Components(clock=clock)
    exchange = components.exchange()
    assert isinstance(exchange, ClientCredentialsExchange)
    assert exchange is components.exchange()
    assert exchange._clock is clock


def test_each_pair_of_secrets_has_its_own_refresher_memory() -> None:
    components = Components(secrets_manager=object(), exchange=object())  # type: ignore[arg-type]
    first = RefresherSettings(credentials_secret_id="c1", token_secret_id="t1")
    second = RefresherSettings(credentials_secret_id="c2", token_secret_id="t2")
    assert components.refresher(first).memory is components.refresher(first).memory
    assert components.refresher(first).memory is not components.refresher(second).memory


def test_a_provider_per_token_secret_with_the_settings_skew() -> None:
    components = Components(secrets_manager=object())  # type: ignore[arg-type]
    settings = ConsumerSettings(token_secret_id="t", token_expiry_skew_seconds=5)
    provider = components.provider(settings)
    assert provider is components.provider(
        ConsumerSettings(token_secret_id="t", api_url="https://other.example", token_expiry_skew_seconds=5)
    )
    assert provider._skew == 5
    assert provider._clock is components.clock


def test_a_client_gets_the_options_meant_for_its_recovery() -> None:
    slept: list[float] = []
    options = {"sleep": slept.append, "clock": lambda: 9.0, "busy_attempts": 2, "timeout": (1.0, 2.0)}
    components = Components(secrets_manager=object(), lambda_client=object(), client_options=options)  # type: ignore[arg-type]
    settings = ConsumerSettings(
        token_secret_id="t", api_url="https://api.example", refresher_function="token-refresher"
    )
    client = components.client(settings)
    assert client is components.client(settings)
    recovery = client.recovery
    recovery._sleep(0.5)
    assert slept == [0.5]
    assert recovery._clock() == 9.0
    assert recovery._busy_attempts == 2
    assert recovery._refresher is not None
    assert client._timeout == (1.0, 2.0)
    plain = Components(secrets_manager=object())  # type: ignore[arg-type]
    without = plain.client(ConsumerSettings(token_secret_id="t", api_url="https://api.example"))
    assert without.recovery._refresher is None
    assert without.recovery._sleep is plain.sleep
