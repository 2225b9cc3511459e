"""The refresher at its edges, in the fast tier: the credentials source over a fake Secrets Manager client, the
Lambda's answer, and the policy's equalities (cooldown, margin, forced interval) read from the settings."""

from __future__ import annotations

import io
import json
from typing import Any, cast

import pytest
import requests
from botocore.exceptions import ClientError

from usage_engine import (
    AccessToken,
    ClientCredentialsExchange,
    Decision,
    RefreshFailedError,
    RefreshRequest,
    StoredToken,
    TokenRefresher,
    TokenStore,
    decide,
)
from usage_engine.errors import (
    SECRET_BINARY_NOT_SUPPORTED,
    CredentialsError,
    CredentialsRejectedError,
    RefreshRequestError,
    SecretStoreError,
)
from usage_engine.refresher import (
    CredentialsRejection,
    CredentialsSource,
    ForcedAttempt,
    RefresherMemory,
    RefreshOutcome,
    backoff_seconds,
    forced_refresh_allowed,
    next_record,
    open_streak,
    rejection_cooldown,
)
from usage_engine.secrets_manager import SecretsManagerSecret
from usage_engine.settings import RefresherSettings
from usage_engine.states import DecisionReason, RefreshReason, TokenProblem
from usage_engine.token import MAX_REJECTION_STREAK, NO_RECORD, RefreshRecord, fingerprint

SETTINGS = RefresherSettings(
    credentials_secret_id="usage-engine/credentials",
    token_secret_id="usage-engine/token",
    token_url="https://idp.example.test/oauth/token",
    audience="https://api.example.test/",
)
MARGIN = SETTINGS.refresh_margin_seconds
BASE = SETTINGS.rejected_cooldown_seconds
INTERVAL = SETTINGS.forced_interval_seconds
NOW = 1_800_000_000
LIFETIME = 3600


class FakeSecretsManager:
    """GetSecretValue as boto3 answers it, for one secret."""

    def __init__(self, response: dict[str, Any] | None = None, error: str | None = None) -> None:
        self.response = response
        self.error = error
        self.calls: list[str] = []

    def get_secret_value(self, *, SecretId: str, **_: Any) -> dict[str, Any]:  # noqa: N803 - boto3's names
        self.calls.append(SecretId)
        if self.error is not None:
            raise ClientError({"Error": {"Code": self.error, "Message": "x"}}, "GetSecretValue")
        assert self.response is not None
        return self.response


def source(client: FakeSecretsManager) -> CredentialsSource:
    return CredentialsSource(SecretsManagerSecret(client, SETTINGS.credentials_secret_id))  # type: ignore[arg-type]


# --- the credentials secret ----------------------------------------------------------------------------------


def test_credentials_are_loaded_with_the_version_they_came_from() -> None:
    client = FakeSecretsManager(
        {"SecretString": '{"clientId": " app ", "clientSecret": "s3cr3t-x"}', "VersionId": "v7"}
    )
    credentials, version = source(client).load_with_version()
    assert (credentials.client_id, credentials.client_secret, version) == ("app", "s3cr3t-x", "v7")
    assert source(client).load() == credentials
    assert client.calls == [SETTINGS.credentials_secret_id] * 2


def test_a_binary_credentials_secret_is_a_credentials_error() -> None:
    client = FakeSecretsManager({"SecretBinary": b"{}", "VersionId": "v1"})
    with pytest.raises(CredentialsError) as caught:
        source(client).load()
    assert (caught.value.field, str(caught.value)) == (
        "(document)",
        "credentials secret: (document): is a binary value, not a JSON string",
    )
    assert caught.value.__cause__ is None


def test_an_empty_credentials_secret_names_the_secret() -> None:
    with pytest.raises(CredentialsError) as caught:
        source(FakeSecretsManager(error="ResourceNotFoundException")).load()
    assert caught.value.field == "(secret)"
    assert str(caught.value).endswith(f"(secret): {SETTINGS.credentials_secret_id} has no value yet")


def test_other_secret_store_failures_are_raised_as_they_are() -> None:
    with pytest.raises(SecretStoreError) as caught:
        source(FakeSecretsManager(error="AccessDeniedException")).load_with_version()
    assert caught.value.code == "AccessDeniedException"
    assert caught.value.code != SECRET_BINARY_NOT_SUPPORTED


# --- the Lambda's answer -----------------------------------------------------------------------------------


def test_the_response_carries_the_fingerprint_and_nothing_of_the_token() -> None:
    outcome = RefreshOutcome(
        refreshed=True,
        reason=DecisionReason.REJECTED,
        expires_at=NOW + LIFETIME,
        seconds_remaining=LIFETIME,
        token_fingerprint="0123456789abcdef",
        idp_latency_ms=12.5,
        idp_attempts=2,
        version_id="v9",
    )
    assert outcome.response() == {
        "refreshed": True,
        "reason": "rejected",
        "expires_at": NOW + LIFETIME,
        "token_fingerprint": "0123456789abcdef",
    }
    assert type(outcome.response()["reason"]) is str
    assert RefreshOutcome(False, DecisionReason.FRESH, 5, 1.0, "f").response()["refreshed"] is False


# --- the policy's equalities --------------------------------------------------------------------------------


def token(age: float, record: RefreshRecord = NO_RECORD, lifetime: int = LIFETIME) -> StoredToken:
    return StoredToken(
        AccessToken(value="tok", expires_at=int(NOW - age) + lifetime, issued_at=int(NOW - age), record=record)
    )


def scheduled(stored: StoredToken) -> Decision:
    return decide(stored, RefreshRequest(), now=NOW, margin_seconds=MARGIN, rejected_cooldown_seconds=BASE)


def rejected(stored: StoredToken) -> Decision:
    assert stored.fingerprint is not None
    request = RefreshRequest("rejected", stored.fingerprint)  # type: ignore[arg-type]
    return decide(stored, request, now=NOW, margin_seconds=MARGIN, rejected_cooldown_seconds=BASE)


def test_a_token_with_exactly_the_margin_left_is_expiring_and_one_second_more_is_fresh() -> None:
    assert scheduled(token(LIFETIME - MARGIN)) == Decision(True, DecisionReason.EXPIRING)
    assert scheduled(token(LIFETIME - MARGIN - 1)) == Decision(False, DecisionReason.FRESH)


def test_a_rejection_at_exactly_the_cooldown_is_honoured_and_one_second_earlier_is_not() -> None:
    record = RefreshRecord(DecisionReason.REJECTED, rejection_streak=1)
    cooldown = backoff_seconds(1, base=BASE, cap=LIFETIME - MARGIN)
    assert cooldown == BASE
    assert rejected(token(cooldown, record)) == Decision(True, DecisionReason.REJECTED)
    assert rejected(token(cooldown - 1, record)) == Decision(False, DecisionReason.REJECTED_WITHIN_COOLDOWN)


def test_the_cooldown_is_capped_at_the_normal_replacement_age() -> None:
    record = RefreshRecord(DecisionReason.REJECTED, rejection_streak=MAX_REJECTION_STREAK)
    assert rejection_cooldown(token(0, record).token, base=BASE, margin_seconds=MARGIN) == LIFETIME - MARGIN  # type: ignore[arg-type]
    assert rejection_cooldown(token(0).token, base=BASE, margin_seconds=MARGIN) == 0  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("record", "streak"),
    [
        (RefreshRecord(DecisionReason.REJECTED, rejection_streak=3), 3),
        (RefreshRecord(DecisionReason.FORCED, rejection_streak=2), 2),
        (RefreshRecord(DecisionReason.EXPIRING, rejection_streak=4), 0),
        (NO_RECORD, 0),
    ],
)
def test_only_tokens_minted_on_demand_continue_a_streak(record: RefreshRecord, streak: int) -> None:
    assert open_streak(record) == streak


def test_backoff_is_zero_before_the_first_and_doubles_up_to_the_cap() -> None:
    assert backoff_seconds(0, base=BASE, cap=10**9) == 0
    assert backoff_seconds(1, base=BASE, cap=10**9) == BASE
    assert backoff_seconds(2, base=BASE, cap=10**9) == 2 * BASE
    assert backoff_seconds(3, base=BASE, cap=4 * BASE) == 4 * BASE
    assert backoff_seconds(4, base=BASE, cap=4 * BASE) == 4 * BASE
    assert backoff_seconds(2, base=BASE, cap=-1) == 0
    # Doublings stop at 2**30 base periods: a huge streak is as long as that, not an overflow.
    assert backoff_seconds(10**6, base=1, cap=float("inf")) == 2**30
    assert backoff_seconds(31, base=1, cap=float("inf")) == 2**30
    assert backoff_seconds(30, base=1, cap=float("inf")) == 2**29


def test_a_remembered_rejection_is_retried_after_its_backoff() -> None:
    rejection = CredentialsRejection("v1", at=NOW, count=2, status=401, reason="invalid_client")
    assert rejection.retry_at(base=BASE, cap=10**6) == NOW + 2 * BASE
    assert rejection.retry_at(base=BASE, cap=BASE) == NOW + BASE


def test_a_forced_refresh_is_allowed_again_at_exactly_the_interval() -> None:
    stored = token(0)
    attempt = ForcedAttempt(NOW, "v1")

    def allowed(now: float, version: str | None = "v1") -> bool:
        return forced_refresh_allowed(stored, attempt, credentials_version=version, now=now, interval_seconds=INTERVAL)

    assert not allowed(NOW)
    assert not allowed(NOW + INTERVAL - 1)
    assert allowed(NOW + INTERVAL)
    assert allowed(NOW, version="v2")
    # A clock that went backwards does not count the attempt.
    assert allowed(NOW - 1)


def test_the_stored_forced_at_limits_like_the_containers_own_attempt() -> None:
    stored = token(0, RefreshRecord(DecisionReason.FORCED, credentials_version="v1", forced_at=NOW))
    assert not forced_refresh_allowed(
        stored, None, credentials_version="v1", now=NOW + INTERVAL - 1, interval_seconds=INTERVAL
    )
    assert forced_refresh_allowed(stored, None, credentials_version="v1", now=NOW + INTERVAL, interval_seconds=INTERVAL)
    assert forced_refresh_allowed(
        StoredToken(None, TokenProblem.MISSING), None, credentials_version="v1", now=NOW, interval_seconds=INTERVAL
    )


def test_forced_at_is_carried_until_exactly_the_interval() -> None:
    stored = token(0, RefreshRecord(DecisionReason.FORCED, credentials_version="v1", forced_at=NOW))

    def carried(now: float, version: str = "v1") -> int | None:
        return next_record(
            stored, DecisionReason.EXPIRING, now=now, credentials_version=version, forced_interval_seconds=INTERVAL
        ).forced_at

    assert carried(NOW) == NOW
    assert carried(NOW + INTERVAL - 1) == NOW
    assert carried(NOW + INTERVAL) is None
    assert carried(NOW - 1) is None
    assert carried(NOW, version="v2") is None


def test_the_new_records_reason_streak_and_credentials() -> None:
    stored = token(
        0, RefreshRecord(DecisionReason.REJECTED, rejection_streak=MAX_REJECTION_STREAK, credentials_version="v1")
    )
    record = next_record(
        stored, DecisionReason.REJECTED, now=NOW, credentials_version="v1", forced_interval_seconds=INTERVAL
    )
    assert record == RefreshRecord(DecisionReason.REJECTED, MAX_REJECTION_STREAK, "v1", None)
    forced = next_record(
        stored, DecisionReason.FORCED, now=NOW + 0.7, credentials_version="v1", forced_interval_seconds=INTERVAL
    )
    assert forced == RefreshRecord(DecisionReason.FORCED, MAX_REJECTION_STREAK, "v1", NOW)
    fresh = next_record(
        stored, DecisionReason.FORCED, now=NOW, credentials_version="v2", forced_interval_seconds=INTERVAL
    )
    assert (fresh.rejection_streak, fresh.credentials_version) == (0, "v2")
    missing = next_record(
        StoredToken(None, TokenProblem.MISSING),
        DecisionReason.REJECTED,
        now=NOW,
        credentials_version=None,
        forced_interval_seconds=INTERVAL,
    )
    assert missing == RefreshRecord(DecisionReason.REJECTED, 1, None, None)


# --- TokenRefresher.run over fakes at the AWS and HTTP boundary ----------------------------------------------


class Secrets:
    """GetSecretValue/PutSecretValue for several secrets; a secret's `fail` code fails every call on it."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[str, str]] = {}
        self.fail: dict[str, str] = {}
        self.reads: list[str] = []
        self.puts = 0

    def get_secret_value(self, *, SecretId: str, **_: Any) -> dict[str, Any]:  # noqa: N803 - boto3's names
        self.reads.append(SecretId)
        if SecretId in self.fail:
            raise ClientError({"Error": {"Code": self.fail[SecretId], "Message": "x"}}, "GetSecretValue")
        if SecretId not in self.values:
            raise ClientError({"Error": {"Code": "ResourceNotFoundException", "Message": "x"}}, "GetSecretValue")
        value, version = self.values[SecretId]
        return {"SecretString": value, "VersionId": version}

    def put_secret_value(self, *, SecretId: str, SecretString: str, **_: Any) -> dict[str, Any]:  # noqa: N803
        self.puts += 1
        version = f"token-v{self.puts}"
        self.values[SecretId] = (SecretString, version)
        return {"VersionId": version}


class Idp:
    """The token endpoint as a requests session: records url and form, answers `status`."""

    def __init__(self) -> None:
        self.status = 200
        self.calls: list[tuple[str, dict[str, str]]] = []

    def post(self, url: str, *, data: dict[str, str], **_: Any) -> requests.Response:
        self.calls.append((url, data))
        response = requests.Response()
        response.status_code = self.status
        response.reason = "x"
        body: dict[str, Any] = (
            {"access_token": f"tok.{len(self.calls)}", "token_type": "Bearer", "expires_in": LIFETIME}
            if self.status == 200
            else {"error": "invalid_client"}
        )
        response.raw = io.BytesIO(json.dumps(body).encode())
        return response


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, credentials: dict[str, str] | None = None) -> None:
        self.secrets = Secrets()
        self.idp = Idp()
        self.clock = Clock()
        document = credentials or {"client_id": "app", "client_secret": "s3cr3t-x"}
        self.secrets.values[SETTINGS.credentials_secret_id] = (json.dumps(document), "cred-v1")
        exchange = ClientCredentialsExchange(cast(requests.Session, self.idp), clock=self.clock)
        self.refresher = TokenRefresher(
            store=TokenStore(SecretsManagerSecret(cast(Any, self.secrets), SETTINGS.token_secret_id)),
            credentials=CredentialsSource(
                SecretsManagerSecret(cast(Any, self.secrets), SETTINGS.credentials_secret_id)
            ),
            exchange=exchange,
            settings=SETTINGS,
            clock=self.clock,
        )

    def run(self, reason: str = "scheduled", fingerprint: str | None = None) -> RefreshOutcome:
        return self.refresher.run(RefreshRequest(reason, fingerprint))  # type: ignore[arg-type]

    def fails(self, reason: str = "scheduled", fingerprint: str | None = None) -> RefreshFailedError:
        with pytest.raises(RefreshFailedError) as caught:
            self.run(reason, fingerprint)
        return caught.value


def test_a_refresh_reports_everything_it_did() -> None:
    harness = Harness()
    outcome = harness.run()
    assert outcome == RefreshOutcome(
        refreshed=True,
        reason=DecisionReason.MISSING,
        expires_at=NOW + LIFETIME,
        seconds_remaining=LIFETIME,
        token_fingerprint=fingerprint("tok.1"),
        idp_latency_ms=outcome.idp_latency_ms,
        idp_attempts=1,
        version_id="token-v1",
    )
    assert outcome.idp_latency_ms is not None
    assert outcome.idp_latency_ms >= 0
    harness.clock.now += 100
    again = harness.run()
    assert again == RefreshOutcome(False, DecisionReason.FRESH, NOW + LIFETIME, LIFETIME - 100, fingerprint("tok.1"))


def test_a_run_that_does_not_refresh_reads_no_credentials() -> None:
    harness = Harness()
    harness.run()
    harness.secrets.reads.clear()
    assert not harness.run().refreshed
    assert harness.secrets.reads == [SETTINGS.token_secret_id]


def test_the_settings_url_and_audience_unless_the_credentials_name_their_own() -> None:
    harness = Harness()
    harness.run()
    assert harness.idp.calls[0][0] == SETTINGS.token_url
    assert harness.idp.calls[0][1]["audience"] == SETTINGS.audience
    own = Harness(
        {
            "client_id": "a",
            "client_secret": "s3cr3t-y",
            "token_url": "https://own.example/t",
            "audience": "https://own/",
        }
    )
    own.run()
    assert own.idp.calls[0][0] == "https://own.example/t"
    assert own.idp.calls[0][1]["audience"] == "https://own/"


def test_a_failure_before_any_decision_carries_the_requests_reason() -> None:
    harness = Harness()
    harness.secrets.fail[SETTINGS.token_secret_id] = "AccessDeniedException"
    error = harness.fails("expired")
    assert (error.reason, error.stored_seconds_remaining) == ("expired", None)
    assert isinstance(error.cause, SecretStoreError)


def test_a_failed_refresh_carries_the_decision_and_the_stored_tokens_time_left() -> None:
    harness = Harness()
    harness.run()
    harness.clock.now += LIFETIME - MARGIN + 10
    harness.idp.status = 503
    error = harness.fails()
    assert (error.reason, error.stored_seconds_remaining) == ("expiring", MARGIN - 10)


def test_a_remembered_rejection_holds_scheduled_runs_for_exactly_its_backoff() -> None:
    harness = Harness()
    harness.idp.status = 401
    harness.fails()
    harness.clock.now += 10
    held = harness.fails()
    assert isinstance(held.cause, CredentialsRejectedError)
    assert (held.cause.credentials_version, held.cause.count, held.cause.status) == ("cred-v1", 1, 401)
    assert "last 10 s ago" in str(held.cause)
    assert f"next scheduled retry in {BASE - 10} s" in str(held.cause)
    assert len(harness.idp.calls) == 1
    on_demand = harness.fails("expired")
    assert "on-demand runs do not retry" in str(on_demand.cause)
    harness.clock.now = NOW + BASE
    harness.fails()
    assert len(harness.idp.calls) == 2
    assert harness.refresher.memory.credentials_rejection is not None
    assert harness.refresher.memory.credentials_rejection.count == 2


def test_new_credentials_start_the_rejection_count_afresh() -> None:
    harness = Harness()
    harness.idp.status = 401
    harness.fails()
    harness.secrets.values[SETTINGS.credentials_secret_id] = (
        json.dumps({"client_id": "b", "client_secret": "s3cr3t-z"}),
        "cred-v2",
    )
    harness.fails()
    rejection = harness.refresher.memory.credentials_rejection
    assert rejection is not None
    assert (rejection.credentials_version, rejection.count) == ("cred-v2", 1)
    harness.idp.status = 200
    harness.clock.now += 1
    assert harness.run("forced").refreshed
    assert harness.refresher.memory.credentials_rejection is None


def test_a_refresher_built_by_hand_remembers_for_its_lifetime() -> None:
    harness = Harness()
    assert harness.refresher.memory == RefresherMemory()
    harness.run("forced")
    assert harness.refresher.memory.forced_attempt == ForcedAttempt(NOW, "cred-v1")


def test_the_decision_without_a_cooldown_honours_any_rejection() -> None:
    record = RefreshRecord(DecisionReason.REJECTED, rejection_streak=5)
    stored = token(0, record)
    request = RefreshRequest("rejected", stored.fingerprint)  # type: ignore[arg-type]
    assert decide(stored, request, now=NOW, margin_seconds=MARGIN) == Decision(True, DecisionReason.REJECTED)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ([], "the event must be a JSON object"),
        ({"reason": "sometimes"}, f"reason must be one of {', '.join(RefreshReason)}"),
        ({"reason": "rejected"}, "reason 'rejected' needs token_fingerprint (16 lowercase hex)"),
    ],
)
def test_a_bad_event_says_what_is_wrong(event: object, message: str) -> None:
    with pytest.raises(RefreshRequestError) as caught:
        RefreshRequest.from_event(event)
    assert str(caught.value).endswith(message)
