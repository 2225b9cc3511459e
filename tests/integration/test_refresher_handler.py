"""The refresher handler invoked as Lambda invokes it, against moto's server and the Usage Engine emulator."""

from __future__ import annotations

import importlib
import json
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
import requests
import time_machine

from local.lambda_runtime import invoke as invoke_function
from local.lambda_runtime import load_event
from local.usage_engine_emulator import ManualClock, UsageEngineEmulator
from tests.conftest import CLIENT_ID, CLIENT_SECRET, Deployment, LambdaOutput
from usage_engine import (
    ClientCredentialsExchange,
    ConfigurationError,
    CredentialsError,
    IdpRejectedError,
    IdpUnavailableError,
    RefreshFailedError,
    RefreshRequestError,
    TokenProvider,
    TokenResponseError,
    fingerprint,
    reset_components,
)
from usage_engine.idp import token_request_retry, token_session
from usage_engine.refresher import CredentialsRejectedError

Read = Callable[[], LambdaOutput]


def invoke(event: Any) -> dict[str, Any]:
    result = invoke_function("token_refresher", event)
    assert isinstance(result, dict)
    return result


@pytest.fixture
def fast_retries() -> None:
    # The container's exchange with the production retry policy, minus most of the backoff sleep.
    reset_components(exchange=ClientCredentialsExchange(token_session(token_request_retry(backoff_factor=0.01))))


def assert_no_secret(value: Any, emulator: UsageEngineEmulator) -> None:
    text = json.dumps(value) if not isinstance(value, str) else value
    assert CLIENT_SECRET not in text
    for token in emulator.issued_tokens:
        assert token not in text


def test_first_run_writes_the_token_secret_in_the_design_format(deployment: Deployment, lambda_stdout: Read) -> None:
    result = invoke(load_event("refresher-scheduled.json"))

    emulator = deployment.emulator
    assert emulator.token_requests == 1
    issued = emulator.issued_tokens[-1]
    stored = deployment.stored_token()
    # The documented fields, and the refresher's notes (docs/contracts.md) that consumers ignore.
    assert set(stored) == {"access_token", "token_type", "expires_at", "issued_at", "scope", "audience"} | {
        "minted_for",
        "credentials_version",
    }
    assert stored["minted_for"] == "missing"
    credentials_version = deployment.secrets.get_secret_value(SecretId="usage-engine/credentials")["VersionId"]
    assert stored["credentials_version"] == credentials_version
    assert stored["access_token"] == issued
    assert stored["token_type"] == "Bearer"
    assert isinstance(stored["expires_at"], int)
    assert isinstance(stored["issued_at"], int)
    assert stored["expires_at"] - stored["issued_at"] == 3600
    assert abs(stored["issued_at"] - time.time()) < 60
    assert stored["audience"] == emulator.audience
    assert "create:meters" in stored["scope"].split()
    claims = jwt.decode(issued, emulator.public_key_pem, algorithms=["RS256"], audience=emulator.audience)
    assert claims["sub"] == f"{CLIENT_ID}@clients"
    # The token expires no later than the IdP says: expires_at counts from before the request.
    assert stored["expires_at"] <= claims["exp"]

    assert result == {
        "refreshed": True,
        "reason": "missing",
        "expires_at": stored["expires_at"],
        "token_fingerprint": fingerprint(issued),
    }
    out = lambda_stdout()
    assert out.metric("TokenRefreshed") == 1
    assert out.metric("IdpLatency") is not None
    assert 3500 < (out.metric("TokenSecondsRemaining") or 0) <= 3600
    refreshed = [line for line in out.logs if line.get("message") == "Token refreshed"]
    assert refreshed[0]["token_fingerprint"] == fingerprint(issued)
    assert_no_secret(result, emulator)
    assert_no_secret([line for line in out.lines], emulator)


def test_second_run_within_the_margin_makes_no_idp_request_and_no_new_version(
    deployment: Deployment, lambda_stdout: Read
) -> None:
    first = invoke(load_event("refresher-scheduled.json"))
    lambda_stdout()
    second = invoke(load_event("refresher-scheduled.json"))

    assert deployment.emulator.token_requests == 1
    assert deployment.token_versions() == 1
    assert deployment.aws.calls("PutSecretValue") == 2  # the test's credentials + the one token version
    assert second == {
        "refreshed": False,
        "reason": "fresh",
        "expires_at": first["expires_at"],
        "token_fingerprint": first["token_fingerprint"],
    }
    out = lambda_stdout()
    assert out.metric("TokenRefreshSkipped") == 1
    assert out.metric("TokenRefreshed") is None


def test_a_run_once_the_token_nears_expiry_refreshes(deployment: Deployment) -> None:
    first = invoke(load_event("refresher-scheduled.json"))
    # 41 minutes later 19 minutes are left: inside the 20-minute margin.
    with time_machine.travel(time.time() + 41 * 60, tick=True):
        second = invoke(load_event("refresher-scheduled.json"))
    assert second["refreshed"] is True
    assert second["reason"] == "expiring"
    assert second["expires_at"] >= first["expires_at"] + 41 * 60 - 1
    assert deployment.emulator.token_requests == 2
    assert deployment.token_versions() == 2
    assert deployment.stored_token()["access_token"] == deployment.emulator.issued_tokens[-1]


def test_the_eventbridge_envelope_is_a_scheduled_run(deployment: Deployment) -> None:
    assert invoke(load_event("refresher-eventbridge-envelope.json"))["reason"] == "missing"


def test_many_reports_of_the_same_rejected_token_cause_one_idp_request(deployment: Deployment) -> None:
    invoke(load_event("refresher-scheduled.json"))
    rejected = deployment.stored_token()["access_token"]
    event = load_event("refresher-rejected.json") | {"token_fingerprint": fingerprint(rejected)}

    # Five minutes later the API starts rejecting it (revoked): five consumers report it.
    with time_machine.travel(time.time() + 300, tick=True):
        results = [invoke(event) for _ in range(5)]

    assert [r["refreshed"] for r in results] == [True, False, False, False, False]
    assert results[0]["reason"] == "rejected"
    assert {r["reason"] for r in results[1:]} == {"rejected-token-already-replaced"}
    assert deployment.emulator.token_requests == 2
    assert deployment.stored_token()["access_token"] != rejected


def test_a_token_revoked_right_after_a_scheduled_refresh_is_replaced_at_once(
    deployment: Deployment, lambda_stdout: Read
) -> None:
    """The first rejection of a token is honoured at any age: one IdP request, whoever reports it."""
    invoke(load_event("refresher-scheduled.json"))
    fresh = deployment.stored_token()["access_token"]
    event = load_event("refresher-rejected.json") | {"token_fingerprint": fingerprint(fresh)}
    results = [invoke(event) for _ in range(3)]
    assert [(r["refreshed"], r["reason"]) for r in results] == [(True, "rejected")] + [
        (False, "rejected-token-already-replaced")
    ] * 2
    assert deployment.emulator.token_requests == 2
    replacement = deployment.stored_token()
    assert (replacement["minted_for"], replacement["rejection_streak"]) == ("rejected", 1)
    assert {r["token_fingerprint"] for r in results} == {fingerprint(replacement["access_token"])}


def test_a_token_minted_for_a_rejection_and_rejected_at_once_is_not_replaced_again(
    deployment: Deployment, lambda_stdout: Read
) -> None:
    """The backoff: if the API rejects brand-new tokens, the refresher must not hammer the IdP for it."""
    invoke(load_event("refresher-scheduled.json"))
    first = deployment.stored_token()["access_token"]
    invoke(load_event("refresher-rejected.json") | {"token_fingerprint": fingerprint(first)})
    second = deployment.stored_token()["access_token"]
    lambda_stdout()
    event = load_event("refresher-rejected.json") | {"token_fingerprint": fingerprint(second)}
    results = [invoke(event) for _ in range(3)]
    assert {(r["refreshed"], r["reason"]) for r in results} == {(False, "rejected-within-cooldown")}
    assert deployment.emulator.token_requests == 2
    out = lambda_stdout()
    assert metric_total(out, "TokenRefreshBackedOff") == 3
    assert metric_total(out, "TokenRefreshSkipped") == 3
    # Once its backoff (60 s for the first in a row) has passed, the next rejection is honoured.
    with time_machine.travel(time.time() + 61, tick=True):
        assert invoke(event)["reason"] == "rejected"
    assert deployment.stored_token()["rejection_streak"] == 2


def test_expired_report_with_a_fresh_stored_token_does_not_call_the_idp(deployment: Deployment) -> None:
    invoke(load_event("refresher-scheduled.json"))
    assert invoke(load_event("refresher-expired.json"))["refreshed"] is False
    assert deployment.emulator.token_requests == 1


def test_forced_refresh_calls_the_idp_once_per_10_minutes_unless_the_credentials_change(
    deployment: Deployment, lambda_stdout: Read
) -> None:
    invoke(load_event("refresher-scheduled.json"))
    forced = invoke(load_event("refresher-forced.json"))
    assert (forced["refreshed"], forced["reason"]) == (True, "forced")
    assert deployment.emulator.token_requests == 2
    assert deployment.token_versions() == 2
    lambda_stdout()

    again = invoke(load_event("refresher-forced.json"))
    assert again == forced | {"refreshed": False, "reason": "forced-too-soon"}
    assert deployment.emulator.token_requests == 2
    assert lambda_stdout().metric("TokenRefreshBackedOff") == 1

    # What `make set-credentials` does: a new credentials version, then a forced refresh.
    deployment.store_credentials({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})
    assert invoke(load_event("refresher-forced.json"))["reason"] == "forced"
    with time_machine.travel(time.time() + 601, tick=True):
        assert invoke(load_event("refresher-forced.json"))["reason"] == "forced"
    assert deployment.emulator.token_requests == 4
    assert deployment.token_versions() == 4


def test_camel_case_credentials_work(deployment: Deployment) -> None:
    deployment.store_credentials({"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET})
    assert invoke(load_event("refresher-scheduled.json"))["refreshed"] is True


def test_an_unreadable_token_secret_is_repaired(deployment: Deployment) -> None:
    deployment.write_token('{"access_token": "x", "expires_at": "soon"}')
    result = invoke(load_event("refresher-scheduled.json"))
    assert (result["refreshed"], result["reason"]) == (True, "unreadable")
    assert deployment.stored_token()["access_token"] == deployment.emulator.issued_tokens[-1]


def test_50_threads_on_a_cold_provider_cause_one_get_secret_value(deployment: Deployment) -> None:
    invoke(load_event("refresher-scheduled.json"))
    reads_before = deployment.aws.calls("GetSecretValue")
    provider = TokenProvider.from_env()
    barrier = threading.Barrier(50)
    values: list[str] = []

    def get() -> None:
        barrier.wait()
        values.append(provider.get().value)

    threads = [threading.Thread(target=get) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert values == [deployment.stored_token()["access_token"]] * 50
    assert deployment.aws.calls("GetSecretValue") - reads_before == 2  # the provider's one + stored_token()


def test_the_consumer_reads_the_token_and_the_api_accepts_it(deployment: Deployment) -> None:
    invoke(load_event("refresher-scheduled.json"))
    token = TokenProvider.from_env().get()
    response = requests.get(
        f"{deployment.emulator.base_url}/api/usage-metering/v1/meters",
        headers={"Authorization": token.authorization},
        timeout=5,
    )
    assert response.status_code == 200
    assert response.json() == {"meters": []}
    assert TokenProvider.from_env() is TokenProvider.from_env()


# --- failures: typed error, failure metric, stored token untouched -------------------------------------


def metric_total(out: LambdaOutput, name: str) -> float:
    """The sum of a metric over every invocation that `out` holds (LambdaOutput.metric reads the first)."""
    total = 0.0
    for line in out.lines:
        if "_aws" in line and name in line:
            values = line[name] if isinstance(line[name], list) else [line[name]]
            total += sum(float(v) for v in values)
    return total


def seed_good_token(deployment: Deployment) -> dict[str, Any]:
    invoke(load_event("refresher-scheduled.json"))
    return deployment.stored_token()


def expect_failure(
    deployment: Deployment, lambda_stdout: Read, event: Any, cause: type[Exception]
) -> RefreshFailedError:
    lambda_stdout()
    with pytest.raises(RefreshFailedError) as caught:
        invoke(event)
    assert isinstance(caught.value.cause, cause)
    assert "left untouched" in str(caught.value)
    out = lambda_stdout()
    assert out.metric("TokenRefreshFailed") == 1
    failure_logs = [line for line in out.logs if line.get("message") == "Token refresh failed"]
    assert failure_logs
    assert failure_logs[0]["level"] == "ERROR"
    assert failure_logs[0]["error_type"] == cause.__name__
    assert_no_secret(str(caught.value), deployment.emulator)
    assert_no_secret(out.lines, deployment.emulator)
    return caught.value


@pytest.mark.usefixtures("fast_retries")
@pytest.mark.parametrize("status", [500, 503])
def test_idp_down_throughout_retries_then_fails_leaving_the_token(
    deployment: Deployment, lambda_stdout: Read, status: int
) -> None:
    good = seed_good_token(deployment)
    deployment.emulator.fail_next_token_requests(10, status)
    error = expect_failure(deployment, lambda_stdout, load_event("refresher-forced.json"), IdpUnavailableError)
    assert isinstance(error.cause, IdpUnavailableError)
    assert error.cause.status == status
    assert error.cause.attempts == 4
    assert deployment.emulator.token_requests == 1 + 4
    assert deployment.stored_token() == good
    assert deployment.token_versions() == 1


@pytest.mark.usefixtures("fast_retries")
def test_brief_idp_outage_is_absorbed_by_retries(deployment: Deployment, lambda_stdout: Read) -> None:
    deployment.emulator.fail_next_token_requests(2, 500)
    result = invoke(load_event("refresher-scheduled.json"))
    assert result["refreshed"] is True
    assert deployment.emulator.token_requests == 3
    logs = [line for line in lambda_stdout().logs if line.get("message") == "Token refreshed"]
    assert logs[0]["idp_attempts"] == 3


def test_retry_after_is_honoured(deployment: Deployment) -> None:
    deployment.emulator.fail_next_token_requests(1, 429, retry_after=1)
    started = time.monotonic()
    assert invoke(load_event("refresher-scheduled.json"))["refreshed"] is True
    # Not a speed assertion: proof that the client waited for the server's Retry-After at all.
    assert time.monotonic() - started >= 0.9
    assert deployment.emulator.token_requests == 2


def test_invalid_client_is_not_retried(deployment: Deployment, lambda_stdout: Read) -> None:
    good = seed_good_token(deployment)
    deployment.store_credentials({"client_id": CLIENT_ID, "client_secret": "wrong-secret-123"})
    error = expect_failure(deployment, lambda_stdout, load_event("refresher-forced.json"), IdpRejectedError)
    assert isinstance(error.cause, IdpRejectedError)
    assert error.cause.status == 401
    assert "access_denied" in str(error)
    assert deployment.emulator.token_requests == 2
    assert deployment.stored_token() == good


def test_rejected_credentials_are_remembered_until_they_change(deployment: Deployment, lambda_stdout: Read) -> None:
    """A first deployment with a wrong client secret: consumers keep asking, the IdP is asked once."""
    deployment.store_credentials({"client_id": CLIENT_ID, "client_secret": "wrong-secret-123"})
    expect_failure(deployment, lambda_stdout, load_event("refresher-expired.json"), IdpRejectedError)
    for event in ("refresher-expired.json", "refresher-expired.json", "refresher-scheduled.json"):
        error = expect_failure(deployment, lambda_stdout, load_event(event), CredentialsRejectedError)
        assert "not asked again until the credentials secret changes" in str(error)
    assert deployment.emulator.token_requests == 1
    lambda_stdout()
    with pytest.raises(RefreshFailedError):
        invoke(load_event("refresher-expired.json"))
    out = lambda_stdout()
    assert (out.metric("TokenRefreshFailed"), out.metric("TokenRefreshBackedOff")) == (1, 1)

    deployment.store_credentials({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})
    assert invoke(load_event("refresher-expired.json"))["reason"] == "missing"
    assert deployment.emulator.token_requests == 2


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"client_secret": CLIENT_SECRET}, "client_id"),
        ({"client_id": CLIENT_ID}, "client_secret"),
        ("definitely { not json", "(document)"),
    ],
)
def test_malformed_credentials_name_the_field_and_call_nobody(
    deployment: Deployment, lambda_stdout: Read, document: Any, field: str
) -> None:
    good = seed_good_token(deployment)
    deployment.store_credentials(document)
    error = expect_failure(deployment, lambda_stdout, load_event("refresher-forced.json"), CredentialsError)
    assert field in str(error)
    assert deployment.emulator.token_requests == 1
    assert deployment.stored_token() == good


@pytest.mark.parametrize(
    "fault",
    [
        lambda e: e.garble_next_token_responses(1),
        lambda e: e.transform_next_token_responses(1, lambda d: {k: v for k, v in d.items() if k != "expires_in"}),
        lambda e: e.transform_next_token_responses(1, lambda d: d | {"token_type": "mac"}),
        lambda e: e.transform_next_token_responses(1, lambda d: d | {"expires_in": 0}),
        lambda e: e.transform_next_token_responses(1, lambda d: d | {"access_token": ""}),
    ],
    ids=["garbage", "no-expires_in", "not-bearer", "zero-expires_in", "empty-token"],
)
def test_a_bad_idp_answer_never_replaces_a_good_token(
    deployment: Deployment, lambda_stdout: Read, fault: Callable[[UsageEngineEmulator], None]
) -> None:
    good = seed_good_token(deployment)
    fault(deployment.emulator)
    expect_failure(deployment, lambda_stdout, load_event("refresher-forced.json"), TokenResponseError)
    assert deployment.stored_token() == good
    assert deployment.token_versions() == 1


@pytest.mark.usefixtures("fast_retries")
def test_connection_refused_is_unavailable(
    deployment: Deployment, lambda_stdout: Read, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("USAGE_ENGINE_TOKEN_URL", "http://127.0.0.1:9/authentication/v1/oauth/token")
    error = expect_failure(deployment, lambda_stdout, load_event("refresher-scheduled.json"), IdpUnavailableError)
    assert "connection failed" in str(error)


def test_read_timeout_is_retried_then_unavailable(deployment: Deployment, lambda_stdout: Read) -> None:
    reset_components(
        exchange=ClientCredentialsExchange(
            token_session(token_request_retry(max_retries=1, backoff_factor=0.01)), timeout=(1.0, 0.2)
        )
    )
    deployment.emulator.set_token_delay(0.5)
    error = expect_failure(deployment, lambda_stdout, load_event("refresher-scheduled.json"), IdpUnavailableError)
    assert "read timeout" in str(error)
    assert deployment.emulator.token_requests == 2


def test_credentials_secret_without_a_value(deployment: Deployment, lambda_stdout: Read) -> None:
    deployment.secrets.delete_secret(SecretId="usage-engine/credentials", ForceDeleteWithoutRecovery=True)
    deployment.secrets.create_secret(Name="usage-engine/credentials")
    error = expect_failure(deployment, lambda_stdout, load_event("refresher-scheduled.json"), CredentialsError)
    assert "no value yet" in str(error)


def test_missing_setting_is_a_configuration_error(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_SECRET_ID")
    with pytest.raises(ConfigurationError, match="CREDENTIALS_SECRET_ID"):
        invoke({})


def test_unknown_reason_is_a_typed_error(deployment: Deployment) -> None:
    with pytest.raises(RefreshRequestError, match="reason"):
        invoke({"reason": "because"})
    assert deployment.emulator.token_requests == 0


def test_the_idp_rate_limit_is_survived_with_retry_after(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The limiter's clock moves only by the client's Retry-After waits, so exactly the burst of 5 is admitted
    # before the first 429 however fast or slow the machine runs the invocations.
    limit_clock = ManualClock()
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        limit_clock.advance(seconds)

    monkeypatch.setattr(
        importlib.import_module("urllib3.util.retry"), "time", SimpleNamespace(sleep=wait, time=time.time)
    )
    with UsageEngineEmulator(clients={CLIENT_ID: CLIENT_SECRET}, rate_limit_clock=limit_clock) as limited:
        monkeypatch.setenv("USAGE_ENGINE_TOKEN_URL", limited.token_url)
        monkeypatch.setenv("USAGE_ENGINE_AUDIENCE", limited.audience)
        from tests import leak_guard

        results = []
        for _ in range(7):
            # New credentials each time, as `make set-credentials` stores them: forced is never limited then.
            deployment.store_credentials({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})
            results.append(invoke(load_event("refresher-forced.json")))
            for token in limited.issued_tokens:
                leak_guard.forbid(token)
        assert all(r["refreshed"] for r in results)
        # The burst of 5 is spent, so the 6th request was answered 429 and retried after its Retry-After.
        assert limited.token_requests == 8
        assert len(limited.issued_tokens) == 7
        assert waits == [1]
