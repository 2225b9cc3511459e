"""Seeing threads of one container wait for the token provider's single-flight read, so a test can hold that
read until every other thread is waiting for it (an event, not a sleep)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest

from tests.reliability.harness.storms import HANG_LIMIT_SECONDS
from usage_engine import provider


class _CountingEvent(threading.Event):
    def __init__(self, waiters: FlightWaiters) -> None:
        super().__init__()
        self._waiters = waiters

    def wait(self, timeout: float | None = None) -> bool:
        self._waiters.arrive()
        return super().wait(timeout)


class FlightWaiters:
    """Counts the threads that wait for a read another thread is making (TokenProvider's single flight).

    The provider's flight is internal: the count comes from its `done` event, the one thing a waiter does."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self.count = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FlightWaiters:
        waiters = self

        @dataclass
        class CountedFlight(provider._Flight):
            done: threading.Event = field(default_factory=lambda: _CountingEvent(waiters))

        monkeypatch.setattr(provider, "_Flight", CountedFlight)
        return self

    def arrive(self) -> None:
        with self._condition:
            self.count += 1
            self._condition.notify_all()

    def wait_for(self, count: int) -> None:
        with self._condition:
            if not self._condition.wait_for(lambda: self.count >= count, HANG_LIMIT_SECONDS):
                raise TimeoutError(f"{count} threads never waited for the single-flight read: {self.count} did")

    def __repr__(self) -> str:
        return f"FlightWaiters(count={self.count})"
