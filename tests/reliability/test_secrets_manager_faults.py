"""The fault matrix's Secrets Manager rows (tests/reliability/matrix.py): the refresher and a consumer with
the token or credentials secret broken, throttled or refused; consumers re-reading a secret that lags behind
the refresher's write; and threads of one container waiting for one failing read.

Errors moto cannot produce (throttling, AccessDenied, DecryptionFailure) are answered at botocore's send
boundary of the container's Secrets Manager client (`secrets_faults`), and so are stale reads (the version a
write replaced) and held requests; SDK retry waits are recorded.
"""

from __future__ import annotations

import threading
import time

import pytest

from local.resources import CREDENTIALS_SECRET, TOKEN_SECRET
from tests.reliability import matrix
from tests.reliability.harness.check import rows_of, run_row
from tests.reliability.harness.consumer import create_meter, meters, run_consumer
from tests.reliability.harness.context import Ctx, Observation, scenario
from tests.reliability.harness.faults import AwsFaults
from tests.reliability.harness.query import ask, expire_stored_token, observing, prepare, stored_fingerprint
from tests.reliability.harness.refresher import DEEP_JSON, idp_requests, run_refresher
from tests.reliability.harness.storms import HANG_LIMIT_SECONDS, RefresherRuns
from tests.reliability.harness.threads import FlightWaiters
from usage_engine import components
from usage_engine.metering import METERS_PATH
from usage_engine.recovery import (
    READ_YOUR_WRITE_ATTEMPTS,
    READ_YOUR_WRITE_BASE_DELAY_SECONDS,
    REJECTED_REREAD_JITTER_SECONDS,
)


@pytest.mark.parametrize("row", rows_of(matrix.SECRETS))
def test_fault(row: matrix.Row, ctx: Ctx) -> None:
    run_row(row, ctx)


# --- the refresher ---------------------------------------------------------------------------------------------


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


# --- a consumer: one record through SQS to meter_events ---------------------------------------------------------


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


# --- consumers reading what the refresher just wrote (meter_query) ------------------------------------------------


def lagging_reads_after_refreshes(ctx: Ctx, reads: int) -> AwsFaults:
    """Once a refresher run has finished (before its caller has the answer), the container's next `reads` reads
    of the token secret get the version that run replaced."""
    faults = ctx.secrets_faults
    RefresherRuns(on_finish=lambda: faults.serve_previous(TOKEN_SECRET, times=reads)).install(ctx.monkeypatch)
    return faults


def read_your_write_waits(count: int) -> list[float]:
    return [READ_YOUR_WRITE_BASE_DELAY_SECONDS * 2**attempt for attempt in range(count)]


@scenario("sm-read-your-write-lag")
def _(ctx: Ctx) -> Observation:
    prepare(ctx)
    faults = lagging_reads_after_refreshes(ctx, 1)
    ctx.emulator.fail_next_api_requests(1, 401)
    with observing(ctx) as obs:
        ask(obs)
    assert faults.stale["GetSecretValue"] == 1
    # The jittered wait before re-reading after the 401, then one wait before the read that shows the new token.
    jitter, *waits = ctx.backoff.recovery
    assert 0 <= jitter <= REJECTED_REREAD_JITTER_SECONDS
    assert waits == read_your_write_waits(1)
    assert idp_requests(ctx) == 1 + 1
    return obs


@scenario("sm-read-your-write-lag-expired")
def _(ctx: Ctx) -> Observation:
    prepare(ctx)
    expire_stored_token(ctx)
    faults = lagging_reads_after_refreshes(ctx, 1)
    with observing(ctx) as obs:
        ask(obs)
    assert faults.stale["GetSecretValue"] == 1
    assert ctx.backoff.recovery == read_your_write_waits(1)
    assert idp_requests(ctx) == 1 + 1
    return obs


@scenario("sm-read-your-write-never")
def _(ctx: Ctx) -> Observation:
    prepare(ctx)
    rejected = stored_fingerprint(ctx)
    faults = lagging_reads_after_refreshes(ctx, 1000)
    ctx.emulator.fail_next_api_requests(1, 401)
    with observing(ctx) as obs:
        ask(obs)
    reported = stored_fingerprint(ctx)
    assert faults.stale["GetSecretValue"] == READ_YOUR_WRITE_ATTEMPTS
    # After the jittered wait that follows the 401: a backoff between reads, none after the last.
    assert ctx.backoff.recovery[1:] == read_your_write_waits(READ_YOUR_WRITE_ATTEMPTS - 1)
    (explained,) = [line["error"] for line in obs.out.logs if line.get("message") == "No Usage Engine token"]
    assert f"reported token {reported}" in explained
    assert f"still holds token {rejected}" in explained
    return obs


# --- many threads of one container reading the token secret at once ----------------------------------------------

THREADS = 5


@scenario("sm-single-flight-failure")
def _(ctx: Ctx) -> Observation:
    """meter_query and 4 more threads of its container (a consumer that fans out) start on a cold cache. The
    first read is held at the send boundary until the 4 others wait for it, so the test does not depend on
    which thread leads or how fast the threads start."""
    prepare(ctx)
    faults = ctx.secrets_faults
    faults.fail("GetSecretValue", "ThrottlingException", times=1000, target=TOKEN_SECRET)
    gate = faults.gate("GetSecretValue", target=TOKEN_SECRET)
    waiters = FlightWaiters().install(ctx.monkeypatch)
    raised: list[BaseException] = []

    def fan_out() -> None:
        try:
            components().client_from_env().request("GET", METERS_PATH)
        except BaseException as error:  # noqa: BLE001 - asserted below
            raised.append(error)

    with observing(ctx) as obs:
        threads = [threading.Thread(target=fan_out) for _ in range(THREADS - 1)]
        threads.append(threading.Thread(target=ask, args=(obs,)))
        for thread in threads:
            thread.start()
        gate.wait_reached()
        waiters.wait_for(THREADS - 1)
        gate.open()
        for thread in threads:
            thread.join(HANG_LIMIT_SECONDS)
        assert not any(thread.is_alive() for thread in threads)
    # One read: the SDK's 4 attempts of it, 3 recorded backoff waits; no waiter repeated it.
    assert faults.attempts["GetSecretValue"] == faults.injected["GetSecretValue"] == 4
    assert len(ctx.backoff.aws) == 3
    assert len(raised) == THREADS - 1
    assert len({id(error) for error in raised}) == 1, "each waiter must get the leader's error, not its own"
    assert type(raised[0]).__name__ == "SecretStoreError"
    return obs
