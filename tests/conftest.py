"""Shared fixtures: moto's server and the Usage Engine emulator on loopback, and a fresh "container"."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import boto3
import pytest

from local import lambda_endpoint, lambda_runtime
from local.lambda_endpoint import LocalLambdaEndpoint
from local.lambda_runtime import load_module
from local.moto_server import MotoServer
from local.resources import CREDENTIALS_SECRET, TOKEN_SECRET, LocalResources, create_resources
from local.stack import REFRESHER_FUNCTION, REGION, LocalEndpoints, shared_environment
from local.usage_engine_emulator import UsageEngineEmulator
from tests import leak_guard

pytest_plugins = ["pytester"]

CLIENT_ID = "test-client-id"
CLIENT_SECRET = "test-client-secret-7d1f3e9a0b52"

leak_guard.forbid(CLIENT_SECRET)


@pytest.fixture(scope="session", autouse=True)
def _leak_guard_everywhere() -> Iterator[None]:
    """For the whole session: every emulator's client secrets and issued tokens are forbidden, and every
    Lambda handler's return value and exception message is inspected (however the test invokes it)."""
    patch = pytest.MonkeyPatch()
    load = lambda_runtime.load_module

    def load_guarded(function: str) -> ModuleType:
        module = load(function)
        module.lambda_handler = leak_guard.guard_handler(module.lambda_handler)
        return module

    # invoke() and the local Lambda endpoint both look the handler up through these names.
    patch.setattr(lambda_runtime, "load_module", load_guarded)
    patch.setattr(lambda_endpoint, "load_module", load_guarded)
    init, add_client = UsageEngineEmulator.__init__, UsageEngineEmulator.add_client

    def init_guarded(
        self: UsageEngineEmulator,
        *args: Any,
        clients: dict[str, str] | None = None,
        on_token_issued: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        for secret in (clients or {}).values():
            leak_guard.forbid(secret)

        def issued(token: str) -> None:
            leak_guard.forbid(token)
            if on_token_issued is not None:
                on_token_issued(token)

        init(self, *args, clients=clients, on_token_issued=issued, **kwargs)

    def add_client_guarded(self: UsageEngineEmulator, client_id: str, client_secret: str) -> None:
        leak_guard.forbid(client_secret)
        add_client(self, client_id, client_secret)

    patch.setattr(UsageEngineEmulator, "__init__", init_guarded)
    patch.setattr(UsageEngineEmulator, "add_client", add_client_guarded)
    yield
    patch.undo()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[UsageEngineEmulator]:
    # Rate limiting is tested on its own emulator; here many tests refresh in quick succession.
    with UsageEngineEmulator(
        clients={CLIENT_ID: CLIENT_SECRET}, rate_limit=False, on_token_issued=leak_guard.forbid
    ) as server:
        yield server


@pytest.fixture
def emulator(emulator_server: UsageEngineEmulator) -> Iterator[UsageEngineEmulator]:
    emulator_server.reset()
    yield emulator_server
    emulator_server.reset()


@pytest.fixture
def aws(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """An empty AWS (moto) for this test, and a fresh Lambda container's module state."""
    moto_server.reset()
    for name, value in moto_server.environment().items():
        monkeypatch.setenv(name, value)
    _fresh_container()
    return moto_server


def _fresh_container() -> None:
    # What a new Lambda container starts with: no cached clients, providers or sessions.
    from usage_engine import reset_components

    reset_components()


@dataclass
class Deployment:
    """The stack's resources as template.yaml creates them, and the environment the functions get."""

    aws: MotoServer
    emulator: UsageEngineEmulator
    resources: LocalResources

    @property
    def secrets(self) -> Any:
        return boto3.client("secretsmanager")

    def store_credentials(self, document: dict[str, Any] | str) -> None:
        body = document if isinstance(document, str) else json.dumps(document)
        self.secrets.put_secret_value(SecretId=CREDENTIALS_SECRET, SecretString=body)

    def stored_token(self) -> dict[str, Any]:
        return dict(json.loads(self.secrets.get_secret_value(SecretId=TOKEN_SECRET)["SecretString"]))

    def token_versions(self) -> int:
        versions = self.secrets.list_secret_version_ids(SecretId=TOKEN_SECRET)["Versions"]
        return len(versions)

    def write_token(self, document: dict[str, Any] | str) -> None:
        body = document if isinstance(document, str) else json.dumps(document)
        self.secrets.put_secret_value(SecretId=TOKEN_SECRET, SecretString=body)


@pytest.fixture
def deployment(aws: MotoServer, emulator: UsageEngineEmulator, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    resources = create_resources()
    # The functions' environment as template.yaml defines it, pointed at the emulators.
    env = shared_environment(
        LocalEndpoints(emulator.token_url, emulator.audience, emulator.base_url, resources.dead_letter_queue_url)
    )
    # On-demand refresh needs the local Lambda endpoint: the `consumers` fixture turns it on.
    env.pop("TOKEN_REFRESHER_FUNCTION")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    deployment = Deployment(aws=aws, emulator=emulator, resources=resources)
    deployment.store_credentials({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})
    return deployment


@dataclass
class LambdaOutput:
    """What one handler wrote to stdout: Powertools JSON log lines and EMF metric documents."""

    lines: list[dict[str, Any]]

    @property
    def logs(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if "_aws" not in line]

    def metric(self, name: str) -> float | None:
        for line in self.lines:
            if "_aws" in line and name in line:
                value = line[name]
                return float(value[-1] if isinstance(value, list) else value)
        return None


HANDLER_FUNCTIONS = ("token_refresher", "meter_events", "meter_query")


@pytest.fixture
def lambda_stdout(request: pytest.FixtureRequest) -> Iterator[Callable[[], LambdaOutput]]:
    """Read what the handlers printed: their Powertools JSON log lines and EMF metric documents, leak-checked.

    The modules are loaded before capsys starts, so their loggers keep the session's capture stream (not one
    that closes with this test); a copy handler with the same formatter collects every log line here.
    """
    modules = [load_module(name) for name in HANDLER_FUNCTIONS]
    buffer = io.StringIO()
    copies: list[tuple[Any, logging.Handler]] = []
    for module in modules:
        copy = logging.StreamHandler(buffer)
        copy.setFormatter(module.logger.registered_handler.formatter)
        module.logger.addHandler(copy)
        copies.append((module.logger, copy))
    capsys: pytest.CaptureFixture[str] = request.getfixturevalue("capsys")

    def read() -> LambdaOutput:
        captured = capsys.readouterr()
        text = captured.out + captured.err + buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        # capsys took this text away from the leak guard's report scan, so it is scanned here.
        leaks = leak_guard.find_leaks(text)
        assert not leaks, f"secret values (sha256 prefixes {leaks}) in the functions' output"
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        return LambdaOutput(lines)

    yield read
    for logger, copy in copies:
        logger.removeHandler(copy)


REFRESHER_NAME = REFRESHER_FUNCTION


@pytest.fixture(scope="session")
def lambda_endpoint_server() -> Iterator[LocalLambdaEndpoint]:
    # Reserved concurrency 1, as in template.yaml: concurrent on-demand refreshes are throttled.
    with LocalLambdaEndpoint({REFRESHER_NAME: "token_refresher"}, reserved_concurrency={REFRESHER_NAME: 1}) as server:
        yield server


@pytest.fixture
def consumers(
    deployment: Deployment, lambda_endpoint_server: LocalLambdaEndpoint, monkeypatch: pytest.MonkeyPatch
) -> Deployment:
    """The deployment plus what consumers get: on-demand refresh through a real boto3 lambda.invoke."""
    for name, value in lambda_endpoint_server.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TOKEN_REFRESHER_FUNCTION", REFRESHER_NAME)
    return deployment


@pytest.fixture(autouse=True)
def _no_real_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    # Belt and braces: no test may reach a real AWS endpoint, whatever it forgets to set.
    if "AWS_ENDPOINT_URL" not in os.environ:
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
