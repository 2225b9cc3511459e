"""One emulator for the whole tier, on a manual clock and a recording sleep, reset before every test.

Sharing it keeps the tier fast (key generation dominates) and makes every test also a test of reset():
each one must start from a fresh-looking emulator.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests

from local.usage_engine_emulator import ManualClock, UsageEngineEmulator
from tests import leak_guard
from tests.emulator.support import CLIENT_ID, CLIENT_SECRET, OTHER_ID, OTHER_SECRET, START, request_token


@dataclass
class Shared:
    emulator: UsageEngineEmulator
    clock: ManualClock
    issued: list[str] = field(default_factory=list)
    # What the emulator's injected delays would have slept: recorded, not waited.
    sleeps: list[float] = field(default_factory=list)


@pytest.fixture(scope="package")
def shared() -> Iterator[Shared]:
    clock = ManualClock(START)
    issued: list[str] = []
    sleeps: list[float] = []

    def on_token_issued(token: str) -> None:
        issued.append(token)
        leak_guard.forbid(token)

    clients = {CLIENT_ID: CLIENT_SECRET, OTHER_ID: OTHER_SECRET}
    with UsageEngineEmulator(clients=clients, clock=clock, sleep=sleeps.append, on_token_issued=on_token_issued) as emu:
        yield Shared(emu, clock, issued, sleeps)


@pytest.fixture
def clock(shared: Shared) -> ManualClock:
    shared.clock.now = START
    return shared.clock


@pytest.fixture
def issued(shared: Shared) -> list[str]:
    shared.issued.clear()
    return shared.issued


@pytest.fixture
def sleeps(shared: Shared) -> list[float]:
    shared.sleeps.clear()
    return shared.sleeps


@pytest.fixture
def emulator(shared: Shared, clock: ManualClock, issued: list[str], sleeps: list[float]) -> UsageEngineEmulator:
    shared.emulator.reset()
    return shared.emulator


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def token(http: requests.Session, emulator: UsageEngineEmulator) -> str:
    response = request_token(http, emulator)
    assert response.status_code == 200
    access_token: str = response.json()["access_token"]
    return access_token
