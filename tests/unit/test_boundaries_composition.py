"""The composition root's AWS clients and the meter events' parts, without AWS: each client is created once
per container with the layer's configuration, the deadline-bounded ones once per whole second (at least 1),
an injected client is used as it is, and the dead-letter queue and state table are wired to them."""

from __future__ import annotations

from typing import Any

import pytest

from usage_engine import Components
from usage_engine.aws_clients import (
    DYNAMODB_CONFIG,
    DYNAMODB_FULL_WAIT_SECONDS,
    LAMBDA_CONFIG,
    SECRETS_MANAGER_CONFIG,
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
