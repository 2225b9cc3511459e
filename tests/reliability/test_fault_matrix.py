"""The fault matrix (tests/reliability/matrix.py), one scenario per row, against the real parts.

Refresher rows invoke the token_refresher handler as Lambda does, against moto's server and the Usage
Engine emulator. Consumer rows put one EventBridge-shaped record on the real (moto) meter-events queue and
let the local SQS event source deliver it to the meter_events handler, which reaches the refresher through
boto3's lambda.invoke on the local Lambda endpoint. Secrets Manager errors that moto cannot produce
(throttling, AccessDenied, DecryptionFailure) are answered at botocore's send boundary of the container's
client. Retry waits are recorded instead of slept (`backoff` fixture), so every row runs with the
production retry policies and the whole matrix takes seconds.

Every row asserts the same columns the document shows: the typed error, what the token secret holds
afterwards, the SQS record's fate (never dropped), a log line that explains the outcome, a metric, and that
no secret reached any of it.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
import time_machine
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from local.lambda_runtime import invoke, load_event
from local.resources import CREDENTIALS_SECRET, TOKEN_SECRET
from local.sqs_event_source import BatchResult, SqsEventSource
from local.usage_engine_emulator import UsageEngineEmulator
from tests import leak_guard
from tests.conftest import CLIENT_ID, Deployment, LambdaOutput
from tests.reliability import matrix
from tests.reliability.conftest import AwsFaults, Backoff
from usage_engine import (
    ClientCredentialsExchange,
    ConsumerSettings,
    LambdaRefreshRequester,
    MeterEventHandler,
    RefreshFailedError,
    RetryableMessageError,
    UsageEngineClient,
    UsageMeteringApi,
    api_client,
    refresher,
)
from usage_engine.api_client import api_session
from usage_engine.aws_clients import lambda_client
from usage_engine.provider import shared_provider

# --- the context a scenario runs in ------------------------------------------------------------------------------


@dataclass
class Ctx:
    request: pytest.FixtureRequest
    deployment: Deployment
    backoff: Backoff
    output: Callable[[], LambdaOutput]
    monkeypatch: pytest.MonkeyPatch

    @property
    def emulator(self) -> UsageEngineEmulator:
        return self.deployment.emulator

    @property
    def secrets_faults(self) -> AwsFaults:
        return self.fixture("secrets_faults")

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)


@dataclass
class Observation:
    """What a row's scenario saw; `check` compares it with the row."""

    error: BaseException | None = None
    returned: Any = None
    errors_seen: list[str] = field(default_factory=list)
    before: str | None = None
    after: str | None = None
    versions_before: int = 0
    versions_after: int = 0
    fate: Fate | None = None
    out: LambdaOutput = field(default_factory=lambda: LambdaOutput([]))


@dataclass
class Fate:
    outcome: str
    reason: str | None = None
    redelivery: dict[str, Any] | None = None


Scenario = Callable[[Ctx], Observation]
SCENARIOS: dict[str, Scenario] = {}


def scenario(row_id: str) -> Callable[[Scenario], Scenario]:
    matrix.row(row_id)  # a typo fails at import

    def register(function: Scenario) -> Scenario:
        SCENARIOS[row_id] = function
        return function

    return register


# --- token secret snapshots -------------------------------------------------------------------------------------


def snapshot(deployment: Deployment) -> str | None:
    """The token secret's AWSCURRENT value (binary values as a marker), or None when there is none."""
    try:
        value = deployment.secrets.get_secret_value(SecretId=TOKEN_SECRET)
    except deployment.secrets.exceptions.ResourceNotFoundException:
        return None
    return value.get("SecretString") or f"<binary {len(value.get('SecretBinary', b''))} bytes>"


def versions(deployment: Deployment) -> int:
    # moto answers ListSecretVersionIds on a deleted secret with a 500: ask only when there is a value.
    return deployment.token_versions() if snapshot(deployment) is not None else 0


def access_token(document: str | None) -> str | None:
    try:
        value = json.loads(document or "")
    except (ValueError, RecursionError):
        return None
    return value.get("access_token") if isinstance(value, dict) else None


# --- refresher rows ---------------------------------------------------------------------------------------------


def run_refresher(
    ctx: Ctx, fault: Callable[[], None] | None = None, *, event: str = "refresher-forced.json", seed: bool = True
) -> Observation:
    if seed:
        invoke("token_refresher", load_event("refresher-scheduled.json"))
    if fault is not None:
        fault()
    ctx.backoff.http.clear()
    ctx.backoff.aws.clear()
    obs = Observation(before=snapshot(ctx.deployment), versions_before=versions(ctx.deployment))
    ctx.output()
    try:
        obs.returned = invoke("token_refresher", load_event(event))
    except Exception as error:  # noqa: BLE001 - the row says which error it must be
        obs.error = error
    obs.out = ctx.output()
    obs.after = snapshot(ctx.deployment)
    obs.versions_after = versions(ctx.deployment)
    return obs


def idp_requests(ctx: Ctx) -> int:
    return ctx.emulator.token_requests


def assert_backoff_schedule(sleeps: list[float]) -> None:
    """urllib3 with backoff_factor 0.5 and jitter 0.5: no wait before the 1st retry, then 1-1.5 s, 2-2.5 s."""
    assert len(sleeps) == 2, sleeps
    assert 1.0 <= sleeps[0] <= 1.5
    assert 2.0 <= sleeps[1] <= 2.5


def short_timeouts(connect: float, read: float) -> None:
    # The container's exchange with the production retry policy and shorter timeouts than production.
    refresher._exchange = ClientCredentialsExchange(timeout=(connect, read))


@scenario("idp-connection-refused")
def _(ctx: Ctx) -> Observation:
    port = ctx.fixture("closed_port")
    obs = run_refresher(
        ctx,
        lambda: ctx.monkeypatch.setenv(
            "USAGE_ENGINE_TOKEN_URL", f"http://127.0.0.1:{port}/authentication/v1/oauth/token"
        ),
    )
    assert_backoff_schedule(ctx.backoff.http)
    return obs


@scenario("idp-connect-timeout")
def _(ctx: Ctx) -> Observation:
    port = ctx.fixture("blackhole_port")

    def fault() -> None:
        short_timeouts(connect=0.2, read=1.0)
        ctx.monkeypatch.setenv("USAGE_ENGINE_TOKEN_URL", f"http://127.0.0.1:{port}/authentication/v1/oauth/token")

    obs = run_refresher(ctx, fault)
    assert_backoff_schedule(ctx.backoff.http)
    return obs


@scenario("idp-read-timeout")
def _(ctx: Ctx) -> Observation:
    def fault() -> None:
        short_timeouts(connect=1.0, read=0.15)
        ctx.emulator.set_token_delay(0.4)

    obs = run_refresher(ctx, fault)
    assert idp_requests(ctx) == 1 + 4
    outlast_delayed_answers(0.4)
    return obs


@scenario("idp-500")
def _(ctx: Ctx) -> Observation:
    obs = run_refresher(ctx, lambda: ctx.emulator.fail_next_token_requests(4, 500))
    assert idp_requests(ctx) == 1 + 4
    assert_backoff_schedule(ctx.backoff.http)
    assert isinstance(obs.error, RefreshFailedError)
    assert getattr(obs.error.cause, "attempts", None) == 4
    return obs


@scenario("idp-503-retry-after")
def _(ctx: Ctx) -> Observation:
    obs = run_refresher(ctx, lambda: ctx.emulator.fail_next_token_requests(2, 503, retry_after=7))
    assert ctx.backoff.http == [7, 7]
    assert idp_requests(ctx) == 1 + 3
    return obs


@scenario("idp-503-retry-after-huge")
def _(ctx: Ctx) -> Observation:
    obs = run_refresher(ctx, lambda: ctx.emulator.fail_next_token_requests(4, 503, retry_after=86400))
    assert ctx.backoff.http == [10, 10, 10]
    assert idp_requests(ctx) == 1 + 4
    return obs


@scenario("idp-429")
def _(ctx: Ctx) -> Observation:
    obs = run_refresher(ctx, lambda: ctx.emulator.fail_next_token_requests(4, 429, retry_after=1))
    assert ctx.backoff.http == [1, 1, 1]
    assert idp_requests(ctx) == 1 + 4
    return obs


def outlast_delayed_answers(delay: float) -> None:
    """The emulator's handler threads finish their injected delay after the client gave up; waiting them
    out keeps their late answers (and what they consume from the fault queues) out of the next test."""
    time.sleep(delay + 0.1)


def assert_not_retried(ctx: Ctx) -> None:
    assert idp_requests(ctx) == 1 + 1
    assert ctx.backoff.http == []


@scenario("idp-400")
def _(ctx: Ctx) -> Observation:
    body = b'{"error":"invalid_request","error_description":"Missing required parameter: audience"}'
    obs = run_refresher(ctx, lambda: ctx.emulator.fail_next_token_requests(1, 400, body=body))
    assert_not_retried(ctx)
    # Only the OAuth error code travels; the free-text description is not echoed.
    assert "Missing required parameter" not in str(obs.error)
    return obs


@scenario("idp-401")
def _(ctx: Ctx) -> Observation:
    wrong = {"client_id": CLIENT_ID, "client_secret": "wrong-secret-0123456789"}
    obs = run_refresher(ctx, lambda: ctx.deployment.store_credentials(wrong))
    assert_not_retried(ctx)
    assert "wrong-secret-0123456789" not in json.dumps(obs.out.lines) + str(obs.error)
    return obs


@scenario("idp-403-audience")
def _(ctx: Ctx) -> Observation:
    obs = run_refresher(
        ctx, lambda: ctx.monkeypatch.setenv("USAGE_ENGINE_AUDIENCE", "https://api.other-tenant.example/")
    )
    assert_not_retried(ctx)
    return obs


def transformed(ctx: Ctx, transform: Callable[[dict[str, Any]], dict[str, Any]]) -> Observation:
    obs = run_refresher(ctx, lambda: ctx.emulator.transform_next_token_responses(1, transform))
    assert_not_retried(ctx)
    return obs


@scenario("idp-non-json")
def _(ctx: Ctx) -> Observation:
    obs = run_refresher(ctx, lambda: ctx.emulator.garble_next_token_responses(1))
    assert "upstream error" not in str(obs.error)
    assert_not_retried(ctx)
    return obs


@scenario("idp-no-access-token")
def _(ctx: Ctx) -> Observation:
    return transformed(ctx, lambda d: {k: v for k, v in d.items() if k != "access_token"})


@scenario("idp-expires-in-missing")
def _(ctx: Ctx) -> Observation:
    return transformed(ctx, lambda d: {k: v for k, v in d.items() if k != "expires_in"})


@scenario("idp-expires-in-zero")
def _(ctx: Ctx) -> Observation:
    return transformed(ctx, lambda d: d | {"expires_in": 0})


@scenario("idp-expires-in-negative")
def _(ctx: Ctx) -> Observation:
    return transformed(ctx, lambda d: d | {"expires_in": -3600})


@scenario("idp-expires-in-string")
def _(ctx: Ctx) -> Observation:
    return transformed(ctx, lambda d: d | {"expires_in": "3600"})


@scenario("idp-expires-in-huge")
def _(ctx: Ctx) -> Observation:
    return transformed(ctx, lambda d: d | {"expires_in": 10**12})


@scenario("idp-token-type")
def _(ctx: Ctx) -> Observation:
    return transformed(ctx, lambda d: d | {"token_type": "mac"})


@scenario("idp-multi-mb-body")
def _(ctx: Ctx) -> Observation:
    body = b'{"access_token": "' + b"A" * (5 * 1024 * 1024) + b'"}'
    obs = run_refresher(ctx, lambda: ctx.emulator.garble_next_token_responses(1, body, content_type="application/json"))
    assert_not_retried(ctx)
    return obs


@scenario("idp-token-trailing-newline")
def _(ctx: Ctx) -> Observation:
    return transformed(ctx, lambda d: d | {"access_token": d["access_token"] + "\n"})


DEEP_JSON = b"[" * 5000 + b"]" * 5000


@scenario("idp-deeply-nested-body")
def _(ctx: Ctx) -> Observation:
    obs = run_refresher(
        ctx, lambda: ctx.emulator.garble_next_token_responses(1, DEEP_JSON, content_type="application/json")
    )
    assert_not_retried(ctx)
    return obs


@scenario("idp-deeply-nested-error-body")
def _(ctx: Ctx) -> Observation:
    obs = run_refresher(ctx, lambda: ctx.emulator.fail_next_token_requests(1, 400, body=DEEP_JSON))
    assert_not_retried(ctx)
    return obs


# --- Secrets Manager rows (refresher) ----------------------------------------------------------------------------


@scenario("sm-throttling-burst")
def _(ctx: Ctx) -> Observation:
    faults = ctx.secrets_faults
    obs = run_refresher(ctx, lambda: faults.fail("GetSecretValue", "ThrottlingException", times=3, target=TOKEN_SECRET))
    assert faults.injected["GetSecretValue"] == 3
    # Standard retry mode: one jittered wait per retry, rand(0, 1) * 2^(n-1) s for throttling.
    assert len(ctx.backoff.aws) == 3
    assert all(0 <= wait <= 2**n for n, wait in enumerate(ctx.backoff.aws))
    return obs


@scenario("sm-throttling-beyond-budget")
def _(ctx: Ctx) -> Observation:
    faults = ctx.secrets_faults
    obs = run_refresher(
        ctx, lambda: faults.fail("GetSecretValue", "ThrottlingException", times=99, target=TOKEN_SECRET)
    )
    # SECRETS_MANAGER_CONFIG's total_max_attempts=4 counts requests: 4 requests, 3 waits.
    assert faults.injected["GetSecretValue"] == 4
    assert len(ctx.backoff.aws) == 3
    assert idp_requests(ctx) == 1
    return obs


@scenario("sm-access-denied-read")
def _(ctx: Ctx) -> Observation:
    faults = ctx.secrets_faults
    obs = run_refresher(ctx, lambda: faults.fail("GetSecretValue", "AccessDeniedException", target=CREDENTIALS_SECRET))
    assert faults.injected["GetSecretValue"] == 1
    assert ctx.backoff.aws == []
    assert idp_requests(ctx) == 1
    return obs


@scenario("sm-access-denied-write")
def _(ctx: Ctx) -> Observation:
    faults = ctx.secrets_faults
    obs = run_refresher(ctx, lambda: faults.fail("PutSecretValue", "AccessDeniedException", target=TOKEN_SECRET))
    assert faults.injected["PutSecretValue"] == 1
    assert idp_requests(ctx) == 2
    return obs


@scenario("sm-credentials-not-found")
def _(ctx: Ctx) -> Observation:
    secrets = ctx.deployment.secrets
    obs = run_refresher(
        ctx, lambda: secrets.delete_secret(SecretId=CREDENTIALS_SECRET, ForceDeleteWithoutRecovery=True)
    )
    assert idp_requests(ctx) == 1
    return obs


@scenario("sm-token-secret-not-found")
def _(ctx: Ctx) -> Observation:
    secrets = ctx.deployment.secrets
    obs = run_refresher(
        ctx,
        lambda: secrets.delete_secret(SecretId=TOKEN_SECRET, ForceDeleteWithoutRecovery=True),
        event="refresher-scheduled.json",
        seed=False,
    )
    assert idp_requests(ctx) == 1
    return obs


@scenario("sm-decryption-failure")
def _(ctx: Ctx) -> Observation:
    faults = ctx.secrets_faults
    obs = run_refresher(ctx, lambda: faults.fail("GetSecretValue", "DecryptionFailure", target=CREDENTIALS_SECRET))
    assert faults.injected["GetSecretValue"] == 1
    assert ctx.backoff.aws == []
    assert idp_requests(ctx) == 1
    return obs


@scenario("sm-credentials-malformed")
def _(ctx: Ctx) -> Observation:
    obs = run_refresher(ctx, lambda: ctx.deployment.store_credentials("definitely { not json"))
    assert idp_requests(ctx) == 1
    return obs


@scenario("sm-token-malformed")
def _(ctx: Ctx) -> Observation:
    return run_refresher(ctx, lambda: ctx.deployment.write_token("{not json"), event="refresher-scheduled.json")


@scenario("sm-token-binary")
def _(ctx: Ctx) -> Observation:
    secrets = ctx.deployment.secrets
    return run_refresher(
        ctx,
        lambda: secrets.put_secret_value(SecretId=TOKEN_SECRET, SecretBinary=b"\x00edited by hand\x00"),
        event="refresher-scheduled.json",
    )


@scenario("sm-credentials-binary")
def _(ctx: Ctx) -> Observation:
    secrets = ctx.deployment.secrets
    obs = run_refresher(
        ctx, lambda: secrets.put_secret_value(SecretId=CREDENTIALS_SECRET, SecretBinary=b"\x00pasted binary\x00")
    )
    assert idp_requests(ctx) == 1
    return obs


@scenario("sm-token-deeply-nested")
def _(ctx: Ctx) -> Observation:
    return run_refresher(ctx, lambda: ctx.deployment.write_token(DEEP_JSON.decode()), event="refresher-scheduled.json")


# --- consumer rows: one record through SQS -> meter_events ---------------------------------------------------------


def meter_event(detail_type: str, detail: dict[str, Any]) -> str:
    """The body EventBridge puts on the queue for an upstream system's PutEvents."""
    return json.dumps(
        {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": detail_type,
            "source": "billing.crm",
            "account": "123456789012",
            "time": "2026-11-28T12:00:00Z",
            "region": "eu-west-1",
            "resources": [],
            "detail": detail,
        }
    )


def create_meter(ref: str = "ref-1", user: str = "user-1") -> str:
    return meter_event(
        "Create Meter", {"domain": "acme", "externalRef": ref, "meterTypeId": "api-calls", "userId": user}
    )


def spy_on_errors(ctx: Ctx) -> list[str]:
    """Typed errors behind each record's outcome: what escaped MeterEventHandler.handle (the cause of a
    RetryableMessageError) and what was being handled when a record was dead-lettered."""
    seen: list[str] = []
    handle, dead_letter = MeterEventHandler.handle, MeterEventHandler._dead_letter

    def spying_handle(self: MeterEventHandler, body: str, message_id: str) -> Any:
        try:
            return handle(self, body, message_id)
        except Exception as error:
            cause = error.__cause__ if isinstance(error, RetryableMessageError) else None
            seen.append(type(cause or error).__name__)
            raise

    def spying_dead_letter(self: MeterEventHandler, body: str, message_id: str, reason: str) -> Any:
        seen.append(type(sys.exc_info()[1]).__name__)
        return dead_letter(self, body, message_id, reason)

    ctx.monkeypatch.setattr(MeterEventHandler, "handle", spying_handle)
    ctx.monkeypatch.setattr(MeterEventHandler, "_dead_letter", spying_dead_letter)
    return seen


def receive(queue_url: str) -> list[dict[str, Any]]:
    response = boto3.client("sqs").receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=10,
        AttributeNames=["All"],
        MessageAttributeNames=["All"],
        WaitTimeSeconds=0,
    )
    return list(response.get("Messages", []))


def source_of(deployment: Deployment) -> SqsEventSource:
    resources = deployment.resources
    return SqsEventSource(resources.queue_url, resources.queue_arn, "meter_events")


def fate_of(deployment: Deployment, message_id: str, result: BatchResult) -> Fate:
    """Where the record is now. Exactly one of: applied (gone), visible again for SQS to redeliver, or in
    the dead-letter queue with its reason. Anything else is a dropped record and fails here."""
    again = receive(deployment.resources.queue_url)
    dead = receive(deployment.resources.dead_letter_queue_url)
    if message_id in result.failed:
        assert [m["MessageId"] for m in again] == [message_id], "a failed record must be visible again"
        assert again[0]["Attributes"]["ApproximateReceiveCount"] == "2"
        assert dead == []
        return Fate(matrix.RETRY, redelivery=again[0])
    assert again == [], "a settled record must be deleted from the queue"
    if dead:
        (letter,) = dead
        attributes = letter["MessageAttributes"]
        assert attributes["sourceMessageId"]["StringValue"] == message_id
        return Fate(matrix.DLQ, reason=attributes["reason"]["StringValue"])
    return Fate(matrix.APPLIED)


def deliver(ctx: Ctx, body: str) -> tuple[Fate, SqsEventSource]:
    sqs = boto3.client("sqs")
    message_id = sqs.send_message(QueueUrl=ctx.deployment.resources.queue_url, MessageBody=body)["MessageId"]
    source = source_of(ctx.deployment)
    messages: list[dict[str, Any]] = []
    for _ in range(10):
        messages = source.receive()
        if messages:
            break
    assert [m["MessageId"] for m in messages] == [message_id]
    return fate_of(ctx.deployment, message_id, deliver_as_lambda(source, messages)), source


def deliver_as_lambda(source: SqsEventSource, messages: list[dict[str, Any]]) -> BatchResult:
    """SqsEventSource.deliver, plus what Lambda does when the invocation itself fails: no record of the
    batch is deleted, and all become visible again (at once here, after the visibility timeout in AWS).

    meter_events fails the invocation when every record of a batch failed (Powertools' BatchProcessor
    raises BatchProcessingError by default), so a one-record batch with a retryable fault takes this path.
    """
    try:
        return source.deliver(messages)
    except BatchProcessingError:
        sqs = boto3.client("sqs")
        for message in messages:
            sqs.change_message_visibility(
                QueueUrl=source.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
        ids = [m["MessageId"] for m in messages]
        return BatchResult(received=ids, failed=ids)


def run_consumer(
    ctx: Ctx,
    body: str,
    fault: Callable[[], None] | None = None,
    *,
    seed: bool = True,
    travel: float = 0,
) -> Observation:
    ctx.fixture("consumers")
    if seed:
        invoke("token_refresher", load_event("refresher-scheduled.json"))
    if fault is not None:
        fault()
    ctx.backoff.http.clear()
    ctx.backoff.aws.clear()
    obs = Observation(before=snapshot(ctx.deployment), versions_before=versions(ctx.deployment))
    obs.errors_seen = spy_on_errors(ctx)
    ctx.output()
    if travel:
        with time_machine.travel(time.time() + travel, tick=True):
            obs.fate, _ = deliver(ctx, body)
    else:
        obs.fate, _ = deliver(ctx, body)
    obs.out = ctx.output()
    obs.after = snapshot(ctx.deployment)
    obs.versions_after = versions(ctx.deployment)
    return obs


def install_container_client(ctx: Ctx, **options: Any) -> UsageEngineClient:
    """The consumer container's shared client, built as shared_client() builds it, with test options
    (shorter timeouts, an instrumented session)."""
    settings = ConsumerSettings.from_env()
    refresher_function = settings.refresher_function or ""
    client = UsageEngineClient(
        settings.api_url,
        shared_provider(settings),
        refresher=LambdaRefreshRequester(lambda_client(), refresher_function),
        **options,
    )
    # Undone by the `aws` fixture, which clears the container's clients before every test.
    api_client.clients.set(settings, client)
    return client


def meters(ctx: Ctx) -> list[str]:
    return sorted(m["externalRef"] for m in ctx.emulator.meters)


@scenario("sm-throttling-consumer")
def _(ctx: Ctx) -> Observation:
    faults = ctx.secrets_faults
    obs = run_consumer(
        ctx, create_meter(), lambda: faults.fail("GetSecretValue", "ThrottlingException", times=99, target=TOKEN_SECRET)
    )
    assert faults.injected["GetSecretValue"] == 4
    assert len(ctx.backoff.aws) == 3
    assert ctx.emulator.api_requests == 0
    return obs


@scenario("sm-token-extra-fields")
def _(ctx: Ctx) -> Observation:
    def fault() -> None:
        ctx.deployment.write_token(ctx.deployment.stored_token() | {"note": "rotated by ops", "owner": 42})

    obs = run_consumer(ctx, create_meter(), fault)
    assert meters(ctx) == ["ref-1"]
    assert idp_requests(ctx) == 1
    return obs


@scenario("sm-token-wrong-types")
def _(ctx: Ctx) -> Observation:
    edited = {"access_token": "x", "token_type": "Bearer", "expires_at": "soon", "issued_at": 1}
    obs = run_consumer(ctx, create_meter(), lambda: ctx.deployment.write_token(edited))
    assert meters(ctx) == ["ref-1"]
    assert idp_requests(ctx) == 2
    return obs


@scenario("sm-token-expired")
def _(ctx: Ctx) -> Observation:
    def fault() -> None:
        now = int(time.time())
        ctx.deployment.write_token(ctx.deployment.stored_token() | {"issued_at": now - 3700, "expires_at": now - 100})

    obs = run_consumer(ctx, create_meter(), fault)
    assert meters(ctx) == ["ref-1"]
    assert idp_requests(ctx) == 2
    return obs


@scenario("sm-token-header-breaking")
def _(ctx: Ctx) -> Observation:
    def fault() -> None:
        ctx.deployment.write_token(ctx.deployment.stored_token() | {"access_token": "edited\r\nX-Injected: 1"})

    obs = run_consumer(ctx, create_meter(), fault)
    assert meters(ctx) == ["ref-1"]
    return obs


# --- Usage Engine API rows ------------------------------------------------------------------------------------------


@scenario("api-401-once")
def _(ctx: Ctx) -> Observation:
    # Five minutes after the refresh, so the refresher's cooldown for brand-new tokens is over.
    obs = run_consumer(ctx, create_meter(), lambda: ctx.emulator.fail_next_api_requests(1, 401), travel=300)
    assert meters(ctx) == ["ref-1"]
    assert idp_requests(ctx) == 2
    return obs


@scenario("api-401-always")
def _(ctx: Ctx) -> Observation:
    obs = run_consumer(ctx, create_meter(), lambda: ctx.emulator.fail_next_api_requests(1000, 401), travel=300)
    assert obs.fate is not None
    assert obs.fate.redelivery is not None
    message_id = obs.fate.redelivery["MessageId"]
    # Each redelivery tries to heal once and hits the refresher's cooldown: no second IdP request, no loop.
    source = source_of(ctx.deployment)
    message: dict[str, Any] | None = obs.fate.redelivery
    deliveries = 1
    with time_machine.travel(time.time() + 300, tick=True):
        while message is not None and deliveries < 10:
            result = deliver_as_lambda(source, [message])
            assert result.failed == [message["MessageId"]]
            deliveries += 1
            received = source.receive()
            message = received[0] if received else None
        # SQS's redrive policy (maxReceiveCount 5) moved it to the dead-letter queue: never dropped.
        moved = receive(ctx.deployment.resources.dead_letter_queue_url)
    assert deliveries == 5
    assert [m["MessageId"] for m in moved] == [message_id]
    assert idp_requests(ctx) == 2
    assert meters(ctx) == []
    return obs


@scenario("api-403")
def _(ctx: Ctx) -> Observation:
    return run_consumer(ctx, create_meter(), lambda: ctx.emulator.fail_next_api_requests(1, 403))


@scenario("api-404")
def _(ctx: Ctx) -> Observation:
    obs = run_consumer(ctx, meter_event("Update Meter", {"meterId": "no-such-meter", "value": 5}))
    assert ctx.emulator.api_status_counts == {404: 1}
    return obs


@scenario("api-404-delete")
def _(ctx: Ctx) -> Observation:
    obs = run_consumer(ctx, meter_event("Delete Meter", {"meterId": "already-gone"}))
    assert ctx.emulator.api_status_counts == {404: 1}
    return obs


@scenario("api-409-concurrent-create")
def _(ctx: Ctx) -> Observation:
    def fault() -> None:
        other_container = UsageMeteringApi(
            UsageEngineClient(ctx.emulator.base_url, shared_provider(ConsumerSettings.from_env()))
        )
        session = api_session()
        send = session.request
        raced: list[bool] = []

        def racing_request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            if method == "POST" and not raced:
                raced.append(True)
                # Another delivery of the same record wins the race between lookup and create.
                other_container.create_meter(
                    domain="acme", external_ref="ref-1", meter_type_id="api-calls", user_id="user-1"
                )
            return send(method, url, *args, **kwargs)

        session.request = racing_request  # type: ignore[method-assign]
        install_container_client(ctx, session=session)

    obs = run_consumer(ctx, create_meter(), fault)
    assert meters(ctx) == ["ref-1"]
    assert ctx.emulator.api_status_counts.get(409) == 1
    return obs


@scenario("api-409-no-meter")
def _(ctx: Ctx) -> Observation:
    # Only the create's body names the user; the lookup's query does not.
    obs = run_consumer(
        ctx, create_meter(user="user-409"), lambda: ctx.emulator.fail_api_requests_matching("user-409", 409)
    )
    assert meters(ctx) == []
    return obs


@scenario("api-413")
def _(ctx: Ctx) -> Observation:
    return run_consumer(
        ctx, create_meter(user="user-413"), lambda: ctx.emulator.fail_api_requests_matching("user-413", 413)
    )


@scenario("api-429-retry-after")
def _(ctx: Ctx) -> Observation:
    obs = run_consumer(ctx, create_meter(), lambda: ctx.emulator.fail_next_api_requests(2, 429, retry_after=3))
    assert ctx.backoff.http == [3, 3]
    assert meters(ctx) == ["ref-1"]
    return obs


@scenario("api-429-create")
def _(ctx: Ctx) -> Observation:
    obs = run_consumer(
        ctx, create_meter(user="user-429"), lambda: ctx.emulator.fail_api_requests_matching("user-429", 429)
    )
    assert ctx.emulator.api_status_counts == {200: 1, 429: 1}
    redeliver_after_recovery(ctx, obs)
    assert meters(ctx) == ["ref-1"]
    return obs


def redeliver_after_recovery(ctx: Ctx, obs: Observation) -> None:
    ctx.emulator.clear_api_faults()
    assert obs.fate is not None
    assert obs.fate.redelivery is not None
    assert deliver_as_lambda(source_of(ctx.deployment), [obs.fate.redelivery]).failed == []


@scenario("api-500")
def _(ctx: Ctx) -> Observation:
    obs = run_consumer(ctx, create_meter(), lambda: ctx.emulator.fail_next_api_requests(1, 500))
    assert ctx.emulator.api_requests == 1
    return obs


@scenario("api-503")
def _(ctx: Ctx) -> Observation:
    obs = run_consumer(ctx, create_meter(), lambda: ctx.emulator.fail_next_api_requests(4, 503))
    assert ctx.emulator.api_requests == 4
    assert_backoff_schedule(ctx.backoff.http)
    return obs


@scenario("api-read-timeout")
def _(ctx: Ctx) -> Observation:
    def fault() -> None:
        install_container_client(ctx, timeout=(1.0, 0.15))
        ctx.emulator.set_api_delay(0.4)

    obs = run_consumer(ctx, create_meter(), fault)
    assert ctx.emulator.api_requests == 4
    outlast_delayed_answers(0.4)
    return obs


@scenario("api-read-timeout-create")
def _(ctx: Ctx) -> Observation:
    def fault() -> None:
        session = api_session()
        send = session.request

        def slow_create(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            if method != "POST":
                return send(method, url, *args, **kwargs)
            # The API applies this create after the client stopped waiting for the answer.
            ctx.emulator.set_api_delay(0.6)
            try:
                return send(method, url, *args, **kwargs)
            finally:
                ctx.emulator.set_api_delay(0)

        session.request = slow_create  # type: ignore[method-assign]
        install_container_client(ctx, session=session, timeout=(1.0, 0.3))

    obs = run_consumer(ctx, create_meter(), fault)
    deadline = time.monotonic() + 5
    while not ctx.emulator.meters and time.monotonic() < deadline:
        time.sleep(0.05)
    redeliver_after_recovery(ctx, obs)
    assert meters(ctx) == ["ref-1"]
    return obs


@scenario("api-connection-reset")
def _(ctx: Ctx) -> Observation:
    port = ctx.fixture("resetting_port")
    obs = run_consumer(
        ctx, create_meter(), lambda: ctx.monkeypatch.setenv("USAGE_ENGINE_API_URL", f"http://127.0.0.1:{port}")
    )
    assert_backoff_schedule(ctx.backoff.http)
    return obs


@scenario("api-dlq-unreachable")
def _(ctx: Ctx) -> Observation:
    faults: AwsFaults = ctx.fixture("sqs_faults")
    malformed = meter_event("Create Meter", {"domain": "acme", "externalRef": "ref-1", "meterTypeId": "api-calls"})
    obs = run_consumer(ctx, malformed, lambda: faults.fail("SendMessage", "AccessDenied"))
    assert faults.injected["SendMessage"] == 1
    return obs


# --- the one test ----------------------------------------------------------------------------------------------------


def check(row: matrix.Row, obs: Observation, deployment: Deployment) -> None:
    """The row's structured columns, asserted the same way for every row."""
    if row.sqs is None:
        if row.error is None:
            assert obs.error is None, f"unexpected {obs.error!r}"
        else:
            assert isinstance(obs.error, RefreshFailedError), f"expected RefreshFailedError, got {obs.error!r}"
            assert type(obs.error.cause).__name__ == row.error
            assert "left untouched" in str(obs.error)
    else:
        assert obs.error is None
        assert obs.fate is not None
        assert obs.fate.outcome == row.sqs, f"record {obs.fate.outcome}, expected {row.sqs}"
        if row.error is None:
            assert obs.errors_seen == []
        else:
            assert row.error in obs.errors_seen, obs.errors_seen
        if obs.fate.outcome == matrix.DLQ:
            assert row.log_detail in (obs.fate.reason or "")

    if row.token == matrix.UNTOUCHED:
        assert obs.after == obs.before, "the stored token changed"
        assert obs.versions_after == obs.versions_before
    elif row.token == matrix.REPLACED:
        assert obs.versions_after == obs.versions_before + 1
        assert access_token(obs.after) == deployment.emulator.issued_tokens[-1]
        assert access_token(obs.after) != access_token(obs.before)
    else:
        assert row.token == matrix.NONE_STORED
        assert obs.after is None

    explaining = [line for line in obs.out.logs if line.get("message") == row.log]
    assert explaining, f"no {row.log!r} log line in {[line.get('message') for line in obs.out.logs]}"
    assert any(row.log_detail in json.dumps(line) for line in explaining), explaining
    assert (obs.out.metric(row.metric) or 0) >= 1, f"metric {row.metric} not emitted"

    texts = [
        str(obs.error or ""),
        json.dumps(obs.returned),
        json.dumps(obs.out.lines),
        obs.fate.reason if obs.fate and obs.fate.reason else "",
    ]
    assert leak_guard.find_leaks("\n".join(texts)) == []


def matrix_params() -> list[Any]:
    return [
        pytest.param(
            row, id=row.id, marks=[pytest.mark.xfail(strict=True, reason=row.known_bug)] if row.known_bug else []
        )
        for row in matrix.ROWS
    ]


@pytest.mark.parametrize("row", matrix_params())
def test_fault(
    row: matrix.Row,
    request: pytest.FixtureRequest,
    deployment: Deployment,
    backoff: Backoff,
    function_output: Callable[[], LambdaOutput],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctx = Ctx(request, deployment, backoff, function_output, monkeypatch)
    obs = SCENARIOS[row.id](ctx)
    check(row, obs, deployment)


def test_every_row_has_exactly_one_scenario() -> None:
    assert sorted(SCENARIOS) == sorted(row.id for row in matrix.ROWS)
    assert len({row.id for row in matrix.ROWS}) == len(matrix.ROWS)
