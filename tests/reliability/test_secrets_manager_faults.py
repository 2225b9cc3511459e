"""The fault matrix's Secrets Manager rows (tests/reliability/matrix.py): the refresher and a consumer with
the token or credentials secret broken, throttled or refused.

Errors moto cannot produce (throttling, AccessDenied, DecryptionFailure) are answered at botocore's send
boundary of the container's Secrets Manager client (`secrets_faults`); SDK retry waits are recorded.
"""

from __future__ import annotations

import time

import pytest

from local.resources import CREDENTIALS_SECRET, TOKEN_SECRET
from tests.reliability import matrix
from tests.reliability.harness.check import rows_of, run_row
from tests.reliability.harness.consumer import create_meter, meters, run_consumer
from tests.reliability.harness.context import Ctx, Observation, scenario
from tests.reliability.harness.refresher import DEEP_JSON, idp_requests, run_refresher


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
