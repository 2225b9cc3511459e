"""Consumers against the real parts: moto's server, the Usage Engine emulator, the refresher reached through
boto3's lambda.invoke on the local Lambda endpoint (reserved concurrency 1), handlers invoked as Lambda does."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import boto3
import pytest
import time_machine

from local.lambda_endpoint import LocalLambdaEndpoint
from local.lambda_runtime import invoke, load_event
from local.resources import TOKEN_SECRET, publish_meter_events
from local.sqs_event_source import SqsEventSource
from tests.conftest import CLIENT_SECRET, REFRESHER_NAME, Deployment
from tests.reliability.harness.storms import RefresherRuns
from usage_engine import (
    AuthenticationError,
    Components,
    ConsumerSettings,
    UsageEngineClient,
    UsageMeteringApi,
)
from usage_engine.metering import METERS_PATH


def refresh_now() -> dict[str, Any]:
    return dict(invoke("token_refresher", load_event("refresher-scheduled.json")))


def new_container_client(
    emulator_url: str, *, refresher: bool = True, sleep: Callable[[float], None] | None = None
) -> UsageEngineClient:
    """What one Lambda container builds: its own boto3 clients, TokenProvider and HTTP session."""
    settings = ConsumerSettings(
        token_secret_id=TOKEN_SECRET, api_url=emulator_url, refresher_function=REFRESHER_NAME if refresher else None
    )
    return (Components(sleep=sleep) if sleep else Components()).client(settings)


def test_20_containers_recover_from_a_revocation_with_one_idp_request(
    consumers: Deployment, lambda_endpoint_server: LocalLambdaEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = consumers.emulator
    refresh_now()
    # A consumer's recovery waits end when no refresher run is in flight (what the wall-clock wait stands for),
    # so a slow machine cannot make a container give up before the one refresh has finished.
    runs = RefresherRuns().install(monkeypatch)
    clients = [new_container_client(emulator.base_url, sleep=runs.sleep) for _ in range(20)]
    for client in clients:
        assert client.request("GET", METERS_PATH).status_code == 200
    requests_before = emulator.token_requests
    reads_before = consumers.aws.calls("GetSecretValue")

    # Five minutes on, every issued token is revoked while 20 containers call at once.
    with time_machine.travel(time.time() + 300, tick=True):
        emulator.revoke_all_tokens()
        barrier = threading.Barrier(len(clients))
        statuses: list[int] = []
        errors: list[BaseException] = []

        def call(client: UsageEngineClient) -> None:
            barrier.wait()
            try:
                statuses.append(client.request("GET", METERS_PATH).status_code)
            except BaseException as error:  # noqa: BLE001 - collected and asserted below
                errors.append(error)

        threads = [threading.Thread(target=call, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

    assert errors == []
    assert statuses == [200] * 20
    assert emulator.token_requests - requests_before == 1
    assert len({client.tokens.get().value for client in clients}) == 1
    # Each container re-read the secret a bounded number of times (no polling storm).
    reads = consumers.aws.calls("GetSecretValue") - reads_before
    assert reads <= 20 * 8
    print(f"storm: GetSecretValue={reads} throttled invokes={lambda_endpoint_server.throttles(REFRESHER_NAME)}")


def test_an_expired_stored_token_is_refreshed_on_demand(consumers: Deployment) -> None:
    refresh_now()
    client = new_container_client(consumers.emulator.base_url)
    with time_machine.travel(time.time() + 3600, tick=True):
        assert client.request("GET", METERS_PATH).status_code == 200
    assert consumers.emulator.token_requests == 2


def test_tokens_rejected_even_when_fresh_raise_without_hammering_the_idp(consumers: Deployment) -> None:
    refresh_now()
    client = new_container_client(consumers.emulator.base_url)
    consumers.emulator.fail_next_api_requests(50, 401)
    with time_machine.travel(time.time() + 300, tick=True):
        with pytest.raises(AuthenticationError) as first:
            client.request("GET", METERS_PATH)
        # A second consumer reporting the brand-new token hits the refresher's cooldown.
        with pytest.raises(AuthenticationError):
            new_container_client(consumers.emulator.base_url).request("GET", METERS_PATH)
    assert first.value.status == 401
    assert consumers.emulator.token_requests == 2
    assert CLIENT_SECRET not in str(first.value)
    for token in consumers.emulator.issued_tokens:
        assert token not in str(first.value)


def test_without_on_demand_refresh_a_401_is_an_authentication_error(consumers: Deployment) -> None:
    refresh_now()
    consumers.emulator.revoke_all_tokens()
    with pytest.raises(AuthenticationError, match="on-demand refresh is off"):
        new_container_client(consumers.emulator.base_url, refresher=False).request("GET", METERS_PATH)


def test_a_refresher_that_fails_is_reported_as_token_unavailable(consumers: Deployment) -> None:
    consumers.store_credentials({"client_id": "someone-else", "client_secret": "not-the-secret-1234"})
    from usage_engine import TokenUnavailableError

    with pytest.raises(TokenUnavailableError, match="RefreshFailedError"):
        new_container_client(consumers.emulator.base_url).request("GET", METERS_PATH)


# --- meter_events: SQS batch with partial failures ------------------------------------------------------


def create_event(ref: str, user: str = "user-1") -> tuple[str, dict[str, Any]]:
    return ("Create Meter", {"domain": "acme", "externalRef": ref, "meterTypeId": "api-calls", "userId": user})


def receive_all(source: SqsEventSource, count: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for _ in range(20):
        messages += source.receive()
        if len(messages) >= count:
            break
    assert len(messages) == count
    return messages


def dead_letters(deployment: Deployment) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs")
    response = sqs.receive_message(
        QueueUrl=deployment.resources.dead_letter_queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    )
    return list(response.get("Messages", []))


def test_batch_of_10_partial_failure_dlq_and_idempotent_redelivery(consumers: Deployment) -> None:
    refresh_now()
    emulator = consumers.emulator
    resources = consumers.resources
    events = [create_event(f"ref-{i}") for i in range(8)]
    events.append(("Create Meter", {"domain": "acme", "externalRef": "ref-bad", "meterTypeId": "api-calls"}))
    events.append(create_event("ref-503"))
    emulator.fail_api_requests_matching("ref-503", 503)
    publish_meter_events(resources.event_bus, events)

    source = SqsEventSource(resources.queue_url, resources.queue_arn, "meter_events")
    messages = receive_all(source, 10)
    by_ref = {json.loads(m["Body"])["detail"]["externalRef"]: m["MessageId"] for m in messages}

    result = source.deliver(messages)

    assert result.failed == [by_ref["ref-503"]]
    assert sorted(m["externalRef"] for m in emulator.meters) == [f"ref-{i}" for i in range(8)]
    dlq = dead_letters(consumers)
    assert len(dlq) == 1
    assert json.loads(dlq[0]["Body"])["detail"]["externalRef"] == "ref-bad"
    assert "detail.userId" in dlq[0]["MessageAttributes"]["reason"]["StringValue"]
    assert dlq[0]["MessageAttributes"]["sourceMessageId"]["StringValue"] == by_ref["ref-bad"]

    # SQS delivers at least once: the whole batch again creates no second meter.
    again = invoke("meter_events", {"Records": [source._record(m) for m in messages]})
    assert [f["itemIdentifier"] for f in again["batchItemFailures"]] == [by_ref["ref-503"]]
    assert len(emulator.meters) == 8

    # The API recovers: the redelivered message is applied once.
    emulator.clear_api_faults()
    retried = source.poll_once()
    assert retried.received == [by_ref["ref-503"]]
    assert retried.failed == []
    assert sorted(m["externalRef"] for m in emulator.meters) == sorted([f"ref-{i}" for i in range(8)] + ["ref-503"])


def test_update_and_delete_by_external_ref(consumers: Deployment) -> None:
    refresh_now()
    resources = consumers.resources
    source = SqsEventSource(resources.queue_url, resources.queue_arn, "meter_events")
    publish_meter_events(resources.event_bus, [create_event("ref-u")])
    source.poll_once()
    publish_meter_events(
        resources.event_bus,
        [
            (
                "Update Meter",
                {"domain": "acme", "externalRef": "ref-u", "value": 42, "resetAt": "2026-12-01T00:00:00Z"},
            ),
            ("Update Meter", {"domain": "acme", "externalRef": "ref-missing", "value": 1}),
        ],
    )
    records = receive_all(source, 2)
    result = source.deliver(records)
    # An Update whose meter does not exist (yet) is retried, not dead-lettered: its Create may still come.
    missing = [r["MessageId"] for r in records if "ref-missing" in r["Body"]]
    assert result.failed == missing
    (meter,) = consumers.emulator.meters
    assert (meter["value"], meter["resetAt"]) == (42, "2026-12-01T00:00:00Z")
    assert dead_letters(consumers) == []

    publish_meter_events(resources.event_bus, [("Delete Meter", {"meterId": meter["id"]})] * 2)
    # The two deletes, and the retried update of the meter that still does not exist (visible again at once here).
    assert source.deliver(receive_all(source, 3)).failed == missing
    assert consumers.emulator.meters == []


def test_sample_sqs_event_file(consumers: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    refresh_now()
    response = invoke("meter_events", load_event("meter-events-sqs.json"))
    assert response == {"batchItemFailures": []}
    assert [m["externalRef"] for m in consumers.emulator.meters] == ["acme-user-42-api-calls"]
    assert consumers.emulator.meters[0]["value"] == 17
    assert len(dead_letters(consumers)) == 1


def test_without_any_token_valid_records_are_retried_and_nothing_is_dropped(
    consumers: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOKEN_REFRESHER_FUNCTION")
    event = load_event("meter-events-sqs.json")
    response = invoke("meter_events", event)
    valid = [r["messageId"] for r in event["Records"][:3]]
    assert [f["itemIdentifier"] for f in response["batchItemFailures"]] == valid
    # The malformed fourth record does not depend on a token: it is dead-lettered with its reason.
    assert len(dead_letters(consumers)) == 1


# --- meter_query: HTTP API ----------------------------------------------------------------------------


def query(user_id: str = "user-42") -> dict[str, Any]:
    event = load_event("meter-query-http-api.json")
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/users/{user_id}/meters"
    event["pathParameters"] = {"userId": user_id}
    return dict(invoke("meter_query", event))


def test_query_returns_the_users_meters(consumers: Deployment) -> None:
    refresh_now()
    api = UsageMeteringApi(new_container_client(consumers.emulator.base_url))
    api.create_meter(domain="acme", external_ref="a", meter_type_id="api-calls", user_id="user-42")
    api.create_meter(domain="acme", external_ref="b", meter_type_id="storage-gb", user_id="someone-else")
    response = query()
    assert response["statusCode"] == 200
    body = json.loads(response["body"])
    assert body["userId"] == "user-42"
    assert [m["externalRef"] for m in body["meters"]] == ["a"]


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        (lambda e: e.fail_next_api_requests(1, 500), 502, "upstream_error"),
        (lambda e: e.fail_next_api_requests(1, 404), 404, "upstream_404"),
        (lambda e: e.fail_next_api_requests(50, 401), 503, "upstream_authentication"),
    ],
    ids=["500", "404", "401-always"],
)
def test_query_maps_usage_engine_errors(consumers: Deployment, fault: Any, status: int, code: str) -> None:
    refresh_now()
    fault(consumers.emulator)
    response = query()
    assert response["statusCode"] == status
    assert json.loads(response["body"])["error"]["code"] == code


def test_query_rejects_a_bad_user_id(consumers: Deployment) -> None:
    response = query("bad%20id")
    assert response["statusCode"] == 400
    assert consumers.emulator.api_requests == 0


def test_1000_warm_invocations_read_the_secret_once(consumers: Deployment) -> None:
    refresh_now()
    reads_before = consumers.aws.calls("GetSecretValue")
    event = load_event("meter-query-http-api.json")
    for _ in range(1000):
        assert invoke("meter_query", event)["statusCode"] == 200
    assert consumers.aws.calls("GetSecretValue") - reads_before == 1
    assert consumers.emulator.api_requests == 1000


@pytest.mark.parametrize("retry_after", ["-1", "soon"])
def test_a_malformed_retry_after_does_not_abort_the_retries(deployment: Deployment, retry_after: str) -> None:
    refresh_now()
    emulator = deployment.emulator
    emulator.fail_next_api_requests(2, 503, retry_after=retry_after)  # type: ignore[arg-type]
    client = new_container_client(emulator.base_url, refresher=False)
    response = client.request("GET", METERS_PATH)
    assert response.status_code == 200
    assert client.drain_call_counts() == {"2xx": 1}
