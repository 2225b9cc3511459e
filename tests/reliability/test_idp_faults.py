"""The fault matrix's IdP rows (tests/reliability/matrix.py): the token_refresher handler, invoked as Lambda
invokes it, against moto's server and the Usage Engine emulator with the fault injected; what the refresher
remembers between runs of one container (forced runs, rejected credentials); and an IdP outage as meter_query
sees it.

Retry waits are recorded instead of slept (`backoff` fixture), so every row runs with the production
retry policies; a slow answer is a request the emulator holds until the test ends, so a read timeout
trips whatever the machine's speed.
"""

from __future__ import annotations

import json
import math
import time

import pytest
import time_machine

from local.lambda_runtime import invoke, load_event
from local.usage_engine_emulator import RequestHold
from local.usage_engine_state import ManualClock
from tests.conftest import CLIENT_ID, CLIENT_SECRET, REFRESHER_NAME
from tests.reliability import matrix
from tests.reliability.harness.check import rows_of, run_row
from tests.reliability.harness.context import Ctx, Observation, scenario
from tests.reliability.harness.query import ask, error_code, expire_stored_token, header, observing, prepare
from tests.reliability.harness.refresher import (
    DEEP_JSON,
    assert_backoff_schedule,
    assert_not_retried,
    idp_requests,
    run_refresher,
    short_timeouts,
    transformed,
)
from usage_engine import RefreshFailedError, fingerprint
from usage_engine.recovery import MAX_REFRESH_HOLD_OFF_SECONDS, REFRESH_HOLD_OFF_SECONDS

INVALID_CLIENT = b'{"error":"invalid_client","error_description":"Client authentication failed"}'


@pytest.mark.parametrize("row", rows_of(matrix.IDP))
def test_fault(row: matrix.Row, ctx: Ctx) -> None:
    run_row(row, ctx)


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
        short_timeouts(ctx, connect=0.2, read=1.0)
        ctx.monkeypatch.setenv("USAGE_ENGINE_TOKEN_URL", f"http://127.0.0.1:{port}/authentication/v1/oauth/token")

    obs = run_refresher(ctx, fault)
    assert_backoff_schedule(ctx.backoff.http)
    return obs


@scenario("idp-read-timeout")
def _(ctx: Ctx) -> Observation:
    held: list[RequestHold] = []

    def fault() -> None:
        short_timeouts(ctx, connect=1.0, read=0.15)
        # Parked requests are never answered before the test ends, so every attempt times out.
        held.append(ctx.hold_token_requests())

    obs = run_refresher(ctx, fault)
    (hold,) = held
    # The server may see the last attempt after the client gave up on it: wait for it, not for the clock.
    hold.wait_parked(4)
    assert idp_requests(ctx) == 1 + 4
    assert hold.parked == 4
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


@scenario("idp-503-retry-after-fraction")
def _(ctx: Ctx) -> Observation:
    # The emulator sends the value as given: "1.5", which urllib3 alone refuses (aborting every retry).
    obs = run_refresher(ctx, lambda: ctx.emulator.fail_next_token_requests(2, 503, retry_after=1.5))  # type: ignore[arg-type]
    assert ctx.backoff.http == [1.5, 1.5]
    assert idp_requests(ctx) == 1 + 3
    return obs


# --- what the refresher remembers between runs ------------------------------------------------------------------


def forced() -> dict[str, object]:
    return dict(invoke("token_refresher", load_event("refresher-forced.json")))


def new_credentials_version(ctx: Ctx) -> None:
    """What `make set-credentials` does: the same (or rotated) credentials as a new version of the secret."""
    ctx.deployment.store_credentials({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})


@scenario("idp-forced-twice")
def _(ctx: Ctx) -> Observation:
    first: list[dict[str, object]] = []
    obs = run_refresher(ctx, lambda: first.append(forced()))
    (done,) = first
    assert (done["refreshed"], done["reason"]) == (True, "forced")
    assert obs.returned == {
        "refreshed": False,
        "reason": "forced-too-soon",
        "expires_at": done["expires_at"],
        "token_fingerprint": done["token_fingerprint"],
    }
    assert idp_requests(ctx) == 1 + 1
    with time_machine.travel(time.time() + 9 * 60, tick=True):
        assert forced()["reason"] == "forced-too-soon"
    assert idp_requests(ctx) == 1 + 1
    new_credentials_version(ctx)
    renewed = forced()
    assert (renewed["refreshed"], renewed["reason"]) == (True, "forced")
    assert idp_requests(ctx) == 1 + 2
    return obs


@scenario("idp-invalid-client-remembered")
def _(ctx: Ctx) -> Observation:
    invoke("token_refresher", load_event("refresher-scheduled.json"))
    report = {"reason": "rejected", "token_fingerprint": fingerprint(ctx.deployment.stored_token()["access_token"])}
    refused: list[RefreshFailedError] = []

    def fault() -> None:
        ctx.emulator.fail_next_token_requests(1, 401, body=INVALID_CLIENT)
        with pytest.raises(RefreshFailedError) as raised:
            forced()
        refused.append(raised.value)

    obs = run_refresher(ctx, fault, event=report, seed=False)
    (first,) = refused
    assert type(first.cause).__name__ == "IdpRejectedError"
    assert "invalid_client" in str(first)
    assert idp_requests(ctx) == 1 + 1
    # New credentials (a new version of the secret) are worth one IdP request again.
    new_credentials_version(ctx)
    retried = invoke("token_refresher", report)
    assert (retried["refreshed"], retried["reason"]) == (True, "rejected")
    assert idp_requests(ctx) == 1 + 2
    return obs


@scenario("idp-outage-expired-token")
def _(ctx: Ctx) -> Observation:
    # The hold-off runs on the recovery's clock: frozen here, so the window cannot end while the test runs.
    clock = ManualClock(time.time())
    prepare(ctx, client_options={"clock": clock})
    expire_stored_token(ctx)
    ctx.emulator.fail_next_token_requests(10_000, 503)
    endpoint = ctx.fixture("lambda_endpoint_server")
    aws = ctx.deployment.aws

    def counts() -> tuple[int, int]:
        return aws.calls("GetSecretValue"), endpoint.invocations(REFRESHER_NAME)

    with observing(ctx) as obs:
        reads, invokes = counts()
        first = ask(obs)
        assert (first["statusCode"], error_code(first), header(first, "Retry-After")) == (
            503,
            "token_unavailable",
            None,
        )
        # The consumer's read of the expired token, then one refresher run (its two reads, 4 IdP requests).
        assert counts() == (reads + 3, invokes + 1)
        assert idp_requests(ctx) == 1 + 4
        reads, invokes = counts()
        for _ in range(3):
            held = ask(obs)
            retry_after = int(header(held, "Retry-After") or 0)
            assert math.ceil(REFRESH_HOLD_OFF_SECONDS / 2) <= retry_after <= REFRESH_HOLD_OFF_SECONDS
        assert counts() == (reads, invokes)
    # After the window the first query probes again: one read, one refresher run. (Counted afresh: the window's
    # snapshots of the token secret are reads too.)
    reads, invokes = counts()
    clock.advance(REFRESH_HOLD_OFF_SECONDS + 1)
    assert ask(obs)["statusCode"] == 503
    assert counts() == (reads + 3, invokes + 1)
    # A second failure in a row holds off longer (up to the refresher's schedule interval).
    longer = int(header(ask(obs), "Retry-After") or 0)
    assert REFRESH_HOLD_OFF_SECONDS < longer <= MAX_REFRESH_HOLD_OFF_SECONDS
    assert counts() == (reads + 3, invokes + 1)
    obs.returned = held
    return obs
