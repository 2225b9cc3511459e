"""The reliability tier's fixtures (re-exported by tests/reliability/conftest.py, where pytest finds them)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import Deployment, LambdaOutput
from tests.reliability.harness import faults
from tests.reliability.harness.context import Ctx
from tests.reliability.harness.faults import AwsFaults, Backoff


@pytest.fixture
def backoff(monkeypatch: pytest.MonkeyPatch) -> Backoff:
    """The production retry policies, unchanged, minus the waiting: what they would sleep is recorded."""
    return faults.record_backoff(monkeypatch)


@pytest.fixture
def secrets_faults(aws: Any) -> AwsFaults:
    """Faults on the container's Secrets Manager client: the one the refresher and the consumers use."""
    from usage_engine import components

    return AwsFaults().install(components().secrets_manager())


@pytest.fixture
def sqs_faults(aws: Any) -> AwsFaults:
    """Faults on the container's SQS client (the meter_events dead-letter queue sender)."""
    from usage_engine import components

    return AwsFaults().install(components().sqs())


@pytest.fixture
def closed_port() -> int:
    return faults.closed_port()


@pytest.fixture
def blackhole_port() -> Iterator[int]:
    with faults.blackhole_port() as port:
        yield port


@pytest.fixture
def resetting_port() -> Iterator[int]:
    with faults.resetting_port() as port:
        yield port


@pytest.fixture
def function_output(lambda_stdout: Callable[[], LambdaOutput]) -> Callable[[], LambdaOutput]:
    """Log lines and EMF metric documents of the handlers, leak-checked (tests/conftest.py's lambda_stdout)."""
    return lambda_stdout


@pytest.fixture
def ctx(
    request: pytest.FixtureRequest,
    deployment: Deployment,
    backoff: Backoff,
    function_output: Callable[[], LambdaOutput],
    monkeypatch: pytest.MonkeyPatch,
) -> Ctx:
    return Ctx(request, deployment, backoff, function_output, monkeypatch)
