"""The Usage Engine emulator's fault knobs: injected failures, garbage, delays and request holds.

`FaultKnobs` is the part of `UsageEngineEmulator` (local/usage_engine_emulator.py) that tests turn: every
knob belongs to the current generation, so `reset()` forgets what was injected before it.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from local.usage_engine_state import Response, json_response

# How long a test waits for parked requests before it fails: a guard against a hang, never reached by a
# passing test (a parked request waits for the test, not for the machine).
HOLD_WAIT_LIMIT_SECONDS = 60.0


class RequestHold:
    """Parks matching requests inside the emulator until the test releases them.

    A parked request has been counted but not answered, so a client's read timeout trips whatever the
    machine's speed, and the test decides when (and whether) the request goes on. `wait_parked` and
    `wait_finished` synchronise on events, not on time. Thread-safe; `claim` runs under the emulator lock.
    """

    def __init__(self, count: int | None, method: str | None) -> None:
        self._remaining = count
        self._method = method.upper() if method is not None else None
        self._condition = threading.Condition()
        self._released = False
        self._parked = 0
        self._finished = 0

    @property
    def parked(self) -> int:
        with self._condition:
            return self._parked

    @property
    def finished(self) -> int:
        with self._condition:
            return self._finished

    def claim(self, method: str) -> bool:
        """Whether a request with `method` is to be held (using up one of `count`)."""
        if self._method is not None and method != self._method:
            return False
        if self._remaining is not None:
            if self._remaining == 0:
                return False
            self._remaining -= 1
        return True

    def park(self) -> None:
        with self._condition:
            self._parked += 1
            self._condition.notify_all()
            self._condition.wait_for(lambda: self._released)

    def done(self) -> None:
        with self._condition:
            self._finished += 1
            self._condition.notify_all()

    def release(self) -> None:
        """Let every parked request (and any that still arrives) go on."""
        with self._condition:
            self._released = True
            self._condition.notify_all()

    def wait_parked(self, count: int = 1, timeout: float = HOLD_WAIT_LIMIT_SECONDS) -> None:
        """Return once `count` requests are parked; TimeoutError only if none come (a broken test)."""
        self._wait(lambda: self._parked >= count, f"{count} request(s) to be parked", timeout)

    def wait_finished(self, count: int | None = None, timeout: float = HOLD_WAIT_LIMIT_SECONDS) -> None:
        """Return once `count` held requests (default: all parked so far) have changed the emulator's state."""
        with self._condition:
            wanted = self._parked if count is None else count
        self._wait(lambda: self._finished >= wanted, f"{wanted} held request(s) to finish", timeout)

    def _wait(self, done: Callable[[], bool], what: str, timeout: float) -> None:
        with self._condition:
            if not self._condition.wait_for(done, timeout):
                raise TimeoutError(f"waited {timeout:g} s for {what}")


@dataclass
class Faults:
    """What the fault knobs injected, for the current generation only (`reset` starts a new one)."""

    token_delay: float = 0.0
    token_failures: deque[Response] = field(default_factory=deque)
    token_garbage: deque[Response] = field(default_factory=deque)
    token_transforms: deque[Callable[[dict[str, Any]], dict[str, Any]]] = field(default_factory=deque)
    token_holds: list[RequestHold] = field(default_factory=list)
    api_delay: float = 0.0
    api_failures: deque[Response] = field(default_factory=deque)
    api_failures_matching: list[tuple[str, Response]] = field(default_factory=list)
    api_holds: list[RequestHold] = field(default_factory=list)


@dataclass
class Counters:
    token_requests: int = 0
    api_requests: int = 0
    api_status_counts: Counter[int] = field(default_factory=Counter)


def claim_hold(holds: list[RequestHold], method: str) -> RequestHold | None:
    for hold in holds:
        if hold.claim(method):
            return hold
    return None


def check_count(count: int | None) -> None:
    if count is not None and count < 0:
        raise ValueError("count must be >= 0")


def check_status(status: int) -> None:
    if not 200 <= status <= 599:
        raise ValueError("status must be between 200 and 599")


def check_delay(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("delay must be >= 0")


class FaultKnobs:
    """The knobs; the emulator provides the lock, the current generation's faults and the list of holds."""

    _lock: threading.Lock
    _faults: Faults
    _holds: list[RequestHold]
    _expires_in: int

    def fail_next_token_requests(
        self,
        count: int,
        status: int,
        *,
        retry_after: int | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> None:
        check_count(count)
        check_status(status)
        headers = () if retry_after is None else (("Retry-After", str(retry_after)),)
        payload = b'{"error":"server_error"}' if body is None else body
        response = Response(status, payload, content_type, headers)
        with self._lock:
            self._faults.token_failures.extend([response] * count)

    def garble_next_token_responses(
        self,
        count: int,
        body: bytes = b"<html>upstream error</html>",
        *,
        status: int = 200,
        content_type: str = "text/html",
    ) -> None:
        check_count(count)
        check_status(status)
        with self._lock:
            self._faults.token_garbage.extend([Response(status, body, content_type)] * count)

    def transform_next_token_responses(self, count: int, transform: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Rewrite the next ``count`` successful token responses (failed requests do not use one up)."""
        check_count(count)
        with self._lock:
            self._faults.token_transforms.extend([transform] * count)

    def set_token_delay(self, seconds: float) -> None:
        check_delay(seconds)
        with self._lock:
            self._faults.token_delay = seconds

    def set_expires_in(self, seconds: int) -> None:
        with self._lock:
            self._expires_in = seconds

    def hold_next_token_requests(self, count: int | None = None) -> RequestHold:
        """Park the next `count` token requests (all of them until reset() when None) until the returned
        hold is released: counted, unanswered, and going on only when the test says so."""
        return self._add_hold(count, None, api=False)

    def fail_next_api_requests(self, count: int, status: int, *, retry_after: int | None = None) -> None:
        check_count(count)
        check_status(status)
        headers = () if retry_after is None else (("Retry-After", str(retry_after)),)
        response = json_response(status, {"error": "injected"}, headers)
        with self._lock:
            self._faults.api_failures.extend([response] * count)

    def fail_api_requests_matching(self, text: str, status: int) -> None:
        """Answer `status` to every API request whose query string or body contains `text`, until reset():
        one record's calls fail throughout while the others succeed."""
        check_status(status)
        if not text:
            raise ValueError("text must not be empty")
        with self._lock:
            self._faults.api_failures_matching.append((text, json_response(status, {"error": "injected"})))

    def hold_next_api_requests(self, count: int | None = None, *, method: str | None = None) -> RequestHold:
        """Park the next `count` API requests (with `method`, if given; all of them until reset() when
        `count` is None) until the returned hold is released. A held create is applied after its client
        stopped waiting only when the test releases it; `wait_finished` says when it has been."""
        return self._add_hold(count, method, api=True)

    def clear_api_faults(self) -> None:
        """The API recovers: forget injected API failures, delay and holds, keep meters and tokens."""
        with self._lock:
            self._faults.api_failures.clear()
            self._faults.api_failures_matching.clear()
            self._faults.api_holds.clear()
            self._faults.api_delay = 0.0

    def set_api_delay(self, seconds: float) -> None:
        check_delay(seconds)
        with self._lock:
            self._faults.api_delay = seconds

    def _add_hold(self, count: int | None, method: str | None, *, api: bool) -> RequestHold:
        check_count(count)
        hold = RequestHold(count, method)
        with self._lock:
            (self._faults.api_holds if api else self._faults.token_holds).append(hold)
            self._holds.append(hold)
        return hold
