"""Containers for the storm tests, modelled as Lambda builds them: each with its own boto3 clients, token cache
and HTTP session, in threads of this process, against moto's server, the Usage Engine emulator and the local
Lambda endpoint (the refresher with reserved concurrency 1, as template.yaml deploys it).

Nothing here waits on the wall clock: a consumer's busy round lasts until the refresh that made the refresher
busy has finished (`RefresherRuns.sleep`), and every wait is for an event, with a generous limit that only
keeps a broken test from hanging.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.config import Config

from local import lambda_endpoint
from local.lambda_runtime import invoke, load_event
from local.resources import TOKEN_SECRET
from tests.conftest import Deployment
from tests.reliability.harness.faults import AwsFaults
from usage_engine import Components, ConsumerSettings, TokenProvider, UsageEngineClient
from usage_engine.aws_clients import LAMBDA_CONFIG, SECRETS_MANAGER_CONFIG
from usage_engine.metering import METERS_PATH

# Long enough that no loaded machine reaches it; a test that does has hung.
HANG_LIMIT_SECONDS = 300.0


def refresh_now() -> dict[str, Any]:
    return dict(invoke("token_refresher", load_event("refresher-scheduled.json")))


class RefresherRuns:
    """The token_refresher invocations the local Lambda endpoint runs, counted as they start and finish."""

    def __init__(self, *, on_finish: Callable[[], None] | None = None) -> None:
        self._condition = threading.Condition()
        self._running = 0
        self.finished = 0
        self.waits: list[float] = []
        # Runs in the refresher's thread once a run has finished, before the invoke's caller gets its answer.
        self._on_finish = on_finish

    def install(self, monkeypatch: pytest.MonkeyPatch) -> RefresherRuns:
        load = lambda_endpoint.load_module

        def counted(folder: str) -> Any:
            module: ModuleType = load(folder)
            if folder != "token_refresher":
                return module
            return SimpleNamespace(lambda_handler=self._counting(module.lambda_handler))

        monkeypatch.setattr(lambda_endpoint, "load_module", counted)
        return self

    def _counting(self, handler: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def run(event: Any, context: Any) -> Any:
            with self._condition:
                self._running += 1
            try:
                return handler(event, context)
            finally:
                if self._on_finish is not None:
                    self._on_finish()
                with self._condition:
                    self._running -= 1
                    self.finished += 1
                    self._condition.notify_all()

        return run

    def sleep(self, seconds: float) -> None:
        """A consumer's recovery wait: over once no refresher run is in flight.

        A busy answer means a run was in flight; once it has finished, the token it stored is there to read,
        which is what the wall-clock wait stands for in production.
        """
        with self._condition:
            self.waits.append(seconds)
            self._wait(lambda: self._running == 0, "the running refresh to finish")

    def wait_finished(self, count: int) -> None:
        with self._condition:
            self._wait(lambda: self.finished >= count, f"{count} refresher runs to finish")

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        if not self._condition.wait_for(done, HANG_LIMIT_SECONDS):
            raise TimeoutError(f"waited {HANG_LIMIT_SECONDS:g} s for {what}")


@dataclass
class Container:
    """One Lambda execution environment of a consumer: its own clients, cache and session."""

    reads: AwsFaults
    tokens: TokenProvider
    client: UsageEngineClient

    @property
    def secret_reads(self) -> int:
        return self.reads.attempts["GetSecretValue"]


def generous(config: Config) -> Config:
    """The production retry budget with timeouts no loaded machine reaches: a slow answer from a loopback
    server must not turn into a retry that the assertions would count."""
    return config.merge(Config(connect_timeout=HANG_LIMIT_SECONDS, read_timeout=HANG_LIMIT_SECONDS))


def new_container(runs: RefresherRuns) -> Container:
    # boto3's default session is not thread-safe: containers are built on the main thread.
    secrets = boto3.client("secretsmanager", config=generous(SECRETS_MANAGER_CONFIG))
    reads = AwsFaults().install(secrets)
    invoker = boto3.client("lambda", config=generous(LAMBDA_CONFIG))
    parts = Components(secrets_manager=secrets, lambda_client=invoker, sleep=runs.sleep)
    settings = ConsumerSettings.from_env()
    return Container(reads, parts.provider(settings), parts.client(settings))


def all_at_once(count: int, work: Callable[[int], Any]) -> tuple[list[Any], list[BaseException]]:
    """Run work(0..count-1) in `count` threads released together; results in index order.

    For a few dozen threads: the point is that they really overlap. Larger storms use `bounded`.
    """
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work(index)
        except BaseException as error:  # noqa: BLE001 - collected and asserted by the caller
            with lock:
                errors.append(error)

    threads = [threading.Thread(target=run, args=(i,), name=f"storm-{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=HANG_LIMIT_SECONDS)
    assert not any(thread.is_alive() for thread in threads), "a storm thread hung"
    return results, errors


def bounded(count: int, work: Callable[[int], Any], *, workers: int) -> list[Any]:
    """Run work(0..count-1) on `workers` threads (as many connections as a loopback server takes at once)."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="storm") as pool:
        futures = [pool.submit(work, index) for index in range(count)]
        return [future.result(timeout=HANG_LIMIT_SECONDS) for future in futures]


def stored_versions(deployment: Deployment) -> list[str]:
    """The access token of every version of the token secret, oldest first."""
    secrets = deployment.secrets
    listed = secrets.list_secret_version_ids(SecretId=TOKEN_SECRET)["Versions"]
    listed.sort(key=lambda version: version["CreatedDate"])
    values = [secrets.get_secret_value(SecretId=TOKEN_SECRET, VersionId=v["VersionId"]) for v in listed]
    return [json.loads(value["SecretString"])["access_token"] for value in values]


def get_status(client: UsageEngineClient) -> int:
    response = client.request("GET", METERS_PATH)
    response.close()
    return response.status_code
