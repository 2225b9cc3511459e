"""The context a fault-matrix row runs in, what its scenario observed, and the registry of scenarios."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from local.resources import TOKEN_SECRET
from local.usage_engine_emulator import RequestHold, UsageEngineEmulator
from tests.conftest import Deployment, LambdaOutput
from tests.reliability import matrix
from tests.reliability.harness.faults import AwsFaults, Backoff
from usage_engine import ClientCredentialsExchange, Components, components, reset_components


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
        faults: AwsFaults = self.fixture("secrets_faults")
        return faults

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)

    def hold_token_requests(self) -> RequestHold:
        """Park every token request from now on; released when the test ends, after its assertions."""
        hold = self.emulator.hold_next_token_requests()
        self.request.addfinalizer(hold.release)
        return hold

    def hold_api_requests(self, *, method: str | None = None) -> RequestHold:
        hold = self.emulator.hold_next_api_requests(method=method)
        self.request.addfinalizer(hold.release)
        return hold

    def container(
        self, *, exchange: ClientCredentialsExchange | None = None, client_options: Mapping[str, Any] | None = None
    ) -> Components:
        """This container's components built again with these parts and the recorded recovery sleep.

        The Secrets Manager and SQS clients are kept, so faults installed on them stay; the Lambda client is
        left to be created on first use (after the `consumers` fixture has pointed it at the local endpoint).
        """
        current = components()
        return reset_components(
            secrets_manager=current.secrets_manager(),
            sqs=current.sqs(),
            exchange=exchange,
            sleep=self.backoff.recovery.append,
            client_options=client_options,
        )


@dataclass
class Fate:
    outcome: str
    reason: str | None = None
    redelivery: dict[str, Any] | None = None


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
    # meter_query rows: every answer in order (`returned` is the last) and what each left of its timeout.
    answers: list[dict[str, Any]] = field(default_factory=list)
    left_ms: list[int] = field(default_factory=list)


Scenario = Callable[[Ctx], Observation]
SCENARIOS: dict[str, Scenario] = {}


def scenario(row_id: str) -> Callable[[Scenario], Scenario]:
    matrix.row(row_id)  # a typo fails at import

    def register(function: Scenario) -> Scenario:
        if row_id in SCENARIOS:
            raise ValueError(f"a second scenario for row {row_id}")
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
