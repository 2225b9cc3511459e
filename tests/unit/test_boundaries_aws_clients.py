"""The AWS clients' configurations, and the dead-letter queue over botocore's Stubber (which checks every
request against the service's model): timeouts and attempt budgets read from the code, the deadline-bounded
variants at the seconds where their arithmetic changes."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.config import Config
from botocore.session import Session
from botocore.stub import Stubber

from usage_engine import aws_clients
from usage_engine.aws_clients import (
    DYNAMODB_CONFIG,
    LAMBDA_CONFIG,
    SECRETS_MANAGER_CONFIG,
    SQS_CONFIG,
    bounded_config,
    bounded_lambda_config,
    new_dynamodb_client,
    new_lambda_client,
    new_secrets_manager_client,
    new_session,
    new_sqs_client,
)
from usage_engine.dead_letter import MAX_REASON_LENGTH, DeadLetterQueue
from usage_engine.errors import DeadLetterError

QUEUE_URL = "https://sqs.eu-west-1.amazonaws.com/123456789012/meter-events-dlq"


def settings(config: Config) -> Any:
    """botocore's Config sets its options as attributes at run time (its stubs do not declare them)."""
    return config


def shape(config: Config) -> tuple[Any, Any, Any]:
    options = settings(config)
    return options.connect_timeout, options.read_timeout, options.retries


@pytest.mark.parametrize(
    ("seconds", "attempts", "connect", "read"),
    [
        (1, 1, 1, 1),
        (2, 1, 2, 2),
        (7, 1, 3, 5),
        (8, 1, 3, 5),
        (15, 1, 3, 5),
        (16, 2, 3, 5),
        (24, 3, 3, 5),
        (32, 4, 3, 5),
        (100, 4, 3, 5),
        (0, 1, 1, 1),
    ],
)
def test_a_bounded_config_splits_the_seconds_into_at_most_four_attempts(
    seconds: int, attempts: int, connect: int, read: int
) -> None:
    for base in (SECRETS_MANAGER_CONFIG, DYNAMODB_CONFIG):
        assert shape(bounded_config(base, seconds)) == (
            connect,
            read,
            {"mode": "standard", "total_max_attempts": attempts},
        )


def test_a_bounded_config_keeps_what_it_does_not_bound() -> None:
    base = Config(connect_timeout=3, read_timeout=5, retries={"mode": "standard"}, user_agent_extra="x")
    assert settings(bounded_config(base, 40)).user_agent_extra == "x"


@pytest.mark.parametrize(("seconds", "connect"), [(1, 1), (2, 2), (3, 3), (20, 3)])
def test_a_bounded_lambda_config_is_one_attempt_ending_within_the_seconds(seconds: int, connect: int) -> None:
    config = bounded_lambda_config(seconds)
    assert shape(config) == (connect, seconds, {"mode": "standard", "total_max_attempts": 1})


def test_the_bounded_lambda_config_keeps_the_rest_of_lambdas() -> None:
    assert settings(bounded_lambda_config(5)).max_pool_connections == settings(LAMBDA_CONFIG).max_pool_connections


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch) -> Session:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_DYNAMODB"):
        monkeypatch.delenv(name, raising=False)
    return new_session()


@pytest.mark.parametrize(
    ("make", "service", "config"),
    [
        (new_secrets_manager_client, "secretsmanager", SECRETS_MANAGER_CONFIG),
        (new_lambda_client, "lambda", LAMBDA_CONFIG),
        (new_sqs_client, "sqs", SQS_CONFIG),
        (new_dynamodb_client, "dynamodb", DYNAMODB_CONFIG),
    ],
)
def test_each_client_is_its_service_with_the_layers_configuration(
    session: Session, make: Any, service: str, config: Config
) -> None:
    client = make(session)
    assert client.meta.service_model.service_name == service
    assert shape(client.meta.config)[:2] == shape(config)[:2]
    assert settings(client.meta.config).retries == settings(config).retries
    assert client.meta.region_name == "eu-west-1"


def test_a_dynamodb_client_takes_a_bounded_configuration(session: Session) -> None:
    client = new_dynamodb_client(session, bounded_config(DYNAMODB_CONFIG, 8))
    assert settings(client.meta.config).retries == {"mode": "standard", "total_max_attempts": 1}


def test_a_new_session_is_a_new_botocore_session() -> None:
    assert isinstance(aws_clients.new_session(), Session)
    assert aws_clients.new_session() is not aws_clients.new_session()


# --- the dead-letter queue -----------------------------------------------------------------------------------


@pytest.fixture
def sqs(session: Session) -> Any:
    return new_sqs_client(session)


def expected_send(body: str, reason: str, source: str) -> dict[str, Any]:
    return {
        "QueueUrl": QUEUE_URL,
        "MessageBody": body,
        "MessageAttributes": {
            "reason": {"DataType": "String", "StringValue": reason},
            "sourceMessageId": {"DataType": "String", "StringValue": source},
        },
    }


def test_a_message_is_dead_lettered_with_its_reason_and_source(sqs: Any) -> None:
    queue = DeadLetterQueue(sqs, QUEUE_URL)
    with Stubber(sqs) as stub:
        stub.add_response("send_message", {"MessageId": "dlq-1"}, expected_send("{}", "bad input", "m-1"))
        assert queue.send("{}", reason="bad input", source_message_id="m-1") == "dlq-1"
        stub.assert_no_pending_responses()
    assert queue.queue_url == QUEUE_URL


def test_a_long_reason_is_cut_and_empty_ones_are_unknown(sqs: Any) -> None:
    queue = DeadLetterQueue(sqs, QUEUE_URL)
    with Stubber(sqs) as stub:
        stub.add_response(
            "send_message", {"MessageId": "dlq-2"}, expected_send("b", "r" * MAX_REASON_LENGTH, "unknown")
        )
        stub.add_response("send_message", {"MessageId": "dlq-3"}, expected_send("b", "unknown", "m-3"))
        assert queue.send("b", reason="r" * (MAX_REASON_LENGTH + 1), source_message_id="") == "dlq-2"
        assert queue.send("b", reason="", source_message_id="m-3") == "dlq-3"
        stub.assert_no_pending_responses()


def test_a_failed_send_is_a_dead_letter_error_naming_only_the_kind(sqs: Any) -> None:
    queue = DeadLetterQueue(sqs, QUEUE_URL)
    with Stubber(sqs) as stub:
        stub.add_client_error("send_message", "AWS.SimpleQueueService.NonExistentQueue", "queue secret-ish detail")
        with pytest.raises(DeadLetterError) as caught:
            queue.send("b", reason="r", source_message_id="m")
    assert str(caught.value) == "sending to the dead-letter queue failed: ClientError"
    assert caught.value.__cause__ is None
