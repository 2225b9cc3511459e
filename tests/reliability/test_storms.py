"""Concurrency and storms: many threads in one container, many containers, concurrent refresher runs, and a
cold start of 500 containers against a throttling Secrets Manager.

Containers are modelled as Lambda builds them (tests/reliability/harness/storms.py). No outcome here depends
on the machine's speed: consumers' busy rounds end when the running refresh has finished, SDK backoff runs on
a virtual clock, and the large storm runs on a bounded pool of threads.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from typing import Any

import boto3
import botocore.endpoint
import pytest
import time_machine

from local.lambda_endpoint import LocalLambdaEndpoint
from local.resources import TOKEN_SECRET
from tests.conftest import REFRESHER_NAME, Deployment
from tests.reliability.harness.faults import error_response
from tests.reliability.harness.storms import (
    RefresherRuns,
    all_at_once,
    bounded,
    generous,
    get_status,
    new_container,
    refresh_now,
    stored_versions,
)
from usage_engine import (
    Components,
    ConsumerSettings,
    RefresherSettings,
    RefreshRequest,
    SecretStoreError,
    fingerprint,
)
from usage_engine.aws_clients import LAMBDA_CONFIG, SECRETS_MANAGER_CONFIG
from usage_engine.recovery import BUSY_ATTEMPTS

# SECRETS_MANAGER_CONFIG: standard retry mode with total_max_attempts=4, which botocore counts as requests.
SDK_REQUESTS_PER_CALL = 4


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> RefresherRuns:
    return RefresherRuns().install(monkeypatch)


# --- many threads in one container ------------------------------------------------------------------------------


def test_32_threads_in_one_container_share_one_read_then_one_refresh(
    consumers: Deployment, runs: RefresherRuns
) -> None:
    emulator = consumers.emulator
    refresh_now()
    container = new_container(runs)

    # Cold start: 32 handler threads at once, 5 requests each, served by one GetSecretValue (single flight).
    statuses, errors = all_at_once(32, lambda _: [get_status(container.client) for _ in range(5)])
    assert errors == []
    assert statuses == [[200] * 5] * 32
    assert container.secret_reads == 1

    # Five minutes later every token is revoked while the 32 threads call again.
    idp_before, versions_before = emulator.token_requests, consumers.token_versions()
    with time_machine.travel(time.time() + 300, tick=True):
        emulator.revoke_all_tokens()
        statuses, errors = all_at_once(32, lambda _: get_status(container.client))
    assert errors == []
    assert statuses == [200] * 32
    assert emulator.token_requests - idp_before == 1
    assert consumers.token_versions() - versions_before == 1
    # Each thread: at most one re-read after invalidating, plus one per busy round while the refresher runs.
    assert container.secret_reads - 1 <= 32 * (1 + BUSY_ATTEMPTS)
    assert stored_versions(consumers)[-1] == container.tokens.get().value == emulator.issued_tokens[-1]


# --- many containers ----------------------------------------------------------------------------------------------


def test_50_containers_cold_starting_on_an_expired_token_cause_one_refresh(
    consumers: Deployment, lambda_endpoint_server: LocalLambdaEndpoint, runs: RefresherRuns
) -> None:
    emulator = consumers.emulator
    refresh_now()
    containers = [new_container(runs) for _ in range(50)]
    invocations_before = lambda_endpoint_server.invocations(REFRESHER_NAME)
    throttles_before = lambda_endpoint_server.throttles(REFRESHER_NAME)

    # An hour later the stored token has expired; 50 containers start at once and all ask for a token.
    with time_machine.travel(time.time() + 3700, tick=True):
        statuses, errors = all_at_once(len(containers), lambda i: get_status(containers[i].client))

    assert errors == []
    assert statuses == [200] * 50
    assert emulator.token_requests == 2
    assert consumers.token_versions() == 2
    assert len({c.tokens.get().value for c in containers}) == 1
    for container in containers:
        # Expired cache miss, then at most one read per busy round.
        assert container.secret_reads <= 1 + BUSY_ATTEMPTS
    invocations = lambda_endpoint_server.invocations(REFRESHER_NAME) - invocations_before
    throttled = lambda_endpoint_server.throttles(REFRESHER_NAME) - throttles_before
    print(f"50 containers: refresher runs={invocations} throttled invokes={throttled}")
    assert invocations <= 50 * BUSY_ATTEMPTS


# --- concurrent refresher invocations -------------------------------------------------------------------------------


def test_scheduled_and_on_demand_runs_at_once_make_one_version_per_real_refresh(
    consumers: Deployment, runs: RefresherRuns
) -> None:
    """Reserved concurrency 1 (template.yaml): async scheduled runs queue, sync on-demand runs are throttled
    or find the token already replaced. One real refresh, one version, nothing lost."""
    emulator = consumers.emulator
    refresh_now()
    old = consumers.stored_token()["access_token"]
    invoker = boto3.client("lambda", config=generous(LAMBDA_CONFIG))
    finished_before = runs.finished
    events = [{"reason": "scheduled"}] * 5
    events += [{"reason": "expired"}] * 5
    events += [{"reason": "rejected", "token_fingerprint": fingerprint(old)}] * 10

    def fire(index: int) -> dict[str, Any]:
        event = events[index]
        kind = "Event" if event["reason"] == "scheduled" else "RequestResponse"
        try:
            response = invoker.invoke(FunctionName=REFRESHER_NAME, InvocationType=kind, Payload=json.dumps(event))
        except invoker.exceptions.TooManyRequestsException:
            return {"throttled": True}
        if kind == "Event":
            return {"queued": True}
        assert "FunctionError" not in response
        return dict(json.loads(response["Payload"].read()))

    # 41 minutes on, 19 minutes are left: inside the 20-minute margin, so a refresh is due.
    with time_machine.travel(time.time() + 41 * 60, tick=True):
        results, errors = all_at_once(len(events), fire)
        ran = sum(1 for r in results if "throttled" not in r)
        # The queued scheduled runs go on after their invokes returned: wait for them to finish.
        runs.wait_finished(finished_before + ran)

    assert errors == []
    refreshed = [r for r in results if r.get("refreshed") is True]
    assert len(refreshed) <= 1
    assert emulator.token_requests == 2, "exactly one real refresh"
    versions = stored_versions(consumers)
    assert versions == emulator.issued_tokens, "one version per issued token, in order: none lost, none doubled"
    assert len(versions) == 2
    assert consumers.stored_token()["access_token"] == emulator.issued_tokens[-1]
    print(
        f"refresher storm: {ran} ran, {sum(1 for r in results if 'throttled' in r)} throttled, "
        f"{len(refreshed)} sync refreshed, versions={len(versions)}"
    )


def test_without_the_concurrency_guard_every_version_is_one_real_refresh(deployment: Deployment) -> None:
    """If reserved concurrency were lifted, concurrent runs could each call the IdP (which is why it is 1),
    but each IdP answer is written exactly once: no version without a refresh, no refresh lost."""
    emulator = deployment.emulator
    refresh_now()
    (seed,) = deployment.secrets.list_secret_version_ids(SecretId=TOKEN_SECRET)["Versions"]
    seed_version = seed["VersionId"]
    settings = RefresherSettings.from_env()
    # Eight containers, each with its own clients and session.
    runners = [
        Components(secrets_manager=boto3.client("secretsmanager", config=generous(SECRETS_MANAGER_CONFIG))).refresher(
            settings
        )
        for _ in range(8)
    ]
    emulator.set_token_delay(0.05)  # most decide before the first write lands (any interleaving must hold)
    with time_machine.travel(time.time() + 41 * 60, tick=True):
        outcomes, errors = all_at_once(8, lambda i: runners[i].run(RefreshRequest("scheduled")))
    assert errors == []
    refreshes = [o for o in outcomes if o.refreshed]
    assert 1 <= len(refreshes) <= 8
    assert emulator.token_requests - 1 == len(refreshes)
    versions = stored_versions(deployment)
    assert len(versions) == 1 + len(refreshes)
    assert sorted(versions) == sorted(emulator.issued_tokens)
    assert len(set(versions)) == len(versions)
    version_ids = {
        v["VersionId"] for v in deployment.secrets.list_secret_version_ids(SecretId=TOKEN_SECRET)["Versions"]
    }
    assert {o.version_id for o in refreshes} == version_ids - {seed_version}
    print(f"unguarded: 8 concurrent runs made {len(refreshes)} IdP refreshes and {len(versions) - 1} versions")


# --- 500 containers cold-starting against a throttling Secrets Manager ---------------------------------------------

CONTAINERS = 500
# Modelled throttle: 200 GetSecretValue per second, 50x stricter than Secrets Manager's documented quota
# (10,000 per second for GetSecretValue and DescribeSecret combined), so that the burst really throttles.
ADMITTED_PER_SECOND = 200
# Containers cold-starting at once in real threads; in virtual time all 500 start at the same instant.
# 16 connections at a time is well inside what moto's loopback server accepts, so no connect can time out.
WORKERS = 16
# A loaded machine may be slow to accept; that must never look like a throttle or an outage.
COLD_START_CONFIG = generous(SECRETS_MANAGER_CONFIG)


class _VirtualTime:
    """botocore's `time` with a per-container virtual clock: a retry wait advances the waiting container's
    clock instead of sleeping. Each container starts at 0, the moment of the cold start."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self.waits: dict[int, list[float]] = {}

    def start(self, container: int) -> None:
        self._local.now = 0.0
        self._local.container = container

    @property
    def container(self) -> int:
        return int(self._local.container)

    @property
    def now(self) -> float:
        return float(getattr(self._local, "now", 0.0))

    def sleep(self, seconds: float) -> None:
        self._local.now = self.now + seconds
        with self._lock:
            self.waits.setdefault(self.container, []).append(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class _ThrottlingSecretsManager:
    """Answers ThrottlingException at the send boundary once a (virtual) second has admitted its quota;
    admitted requests go on to moto."""

    def __init__(self, clock: _VirtualTime) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.admitted: Counter[int] = Counter()
        self.attempts: Counter[int] = Counter()

    def before_send(self, request: Any, **_: Any) -> Any:
        second = math.floor(self._clock.now)
        with self._lock:
            self.attempts[self._clock.container] += 1
            if self.admitted[second] < ADMITTED_PER_SECOND:
                self.admitted[second] += 1
                return None
        return error_response(request, "ThrottlingException")


def test_500_containers_cold_start_with_bounded_reads_and_backoff(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bound: each container makes at most 4 GetSecretValue requests (the SDK's total_max_attempts=4),
    so at most 2,000 for 500 containers, and every retry waits rand(0, 1) * 2^(n-1) s first. Exactly one
    read per container succeeds (the provider's single flight), and a container the SDK gives up on gets a
    typed SecretStoreError. At the modelled 200 reads/s the burst settles in ~2.3 requests per container
    (measured: 1,165-1,177 requests, 491-496 of 500 served)."""
    refresh_now()
    stored = deployment.stored_token()["access_token"]
    settings = ConsumerSettings.from_env()
    clock = _VirtualTime()
    throttle = _ThrottlingSecretsManager(clock)
    monkeypatch.setattr(botocore.endpoint, "time", clock)
    sessions = threading.local()
    reads_before = deployment.aws.calls("GetSecretValue")

    def cold_start(index: int) -> str:
        clock.start(index)
        # boto3's default session is not thread-safe: one session per worker thread builds its containers.
        if not hasattr(sessions, "boto3"):
            sessions.boto3 = boto3.session.Session()
        secrets = sessions.boto3.client("secretsmanager", config=COLD_START_CONFIG)
        secrets.meta.events.register("before-send.secrets-manager.GetSecretValue", throttle.before_send)
        try:
            return Components(secrets_manager=secrets).provider(settings).get().value
        except SecretStoreError as error:
            return f"gave up: {error.code}"
        finally:
            secrets.close()

    results = bounded(CONTAINERS, cold_start, workers=WORKERS)

    served = [r for r in results if not r.startswith("gave up")]
    # A container the SDK gave up on has a typed error naming the throttling, nothing else.
    assert {r for r in results if r.startswith("gave up")} <= {"gave up: ThrottlingException"}
    assert set(served) == {stored}
    # With 4 SDK requests (~7 s of backoff at most, inside the consumers' timeouts) about 98-99% are served
    # at this 50x-stricter-than-AWS throttle; the rest get the typed, retryable error above.
    assert len(served) >= CONTAINERS * 0.95
    attempts = sum(throttle.attempts.values())
    admitted = sum(throttle.admitted.values())
    # One successful read per served container, and only those reached moto.
    assert admitted == len(served) == deployment.aws.calls("GetSecretValue") - reads_before
    # The hard bound, and the model's expected range.
    assert set(throttle.attempts) == set(range(CONTAINERS))
    assert max(throttle.attempts.values()) <= SDK_REQUESTS_PER_CALL
    assert attempts <= CONTAINERS * SDK_REQUESTS_PER_CALL
    assert attempts <= 1500
    # Every retry was preceded by a jittered exponential wait; no container waited more than 1+2+4 s.
    waits = clock.waits
    assert sum(len(w) for w in waits.values()) == attempts - CONTAINERS
    for container, container_waits in waits.items():
        assert len(container_waits) == throttle.attempts[container] - 1
        assert all(0 <= wait <= min(2**n, 20) for n, wait in enumerate(container_waits))
        assert sum(container_waits) <= 7
    longest = max((sum(w) for w in waits.values()), default=0.0)
    print(
        f"500 cold starts: {attempts} GetSecretValue requests ({attempts / CONTAINERS:.2f}/container), "
        f"{attempts - admitted} throttled, {CONTAINERS - len(served)} gave up, longest virtual wait {longest:.1f} s"
    )
