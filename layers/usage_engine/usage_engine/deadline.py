"""The invocation's deadline, and every wait in the layer bounded by it.

Lambda stops an invocation at its timeout: whatever it had not answered by then is lost (a partial batch
response, the metrics, a JSON error body). A handler opens `deadline_scope(Deadline.from_context(context))`;
inside it, HTTP timeouts, backoff, Retry-After, the busy-refresher loop and the refresher invoke all take
`current_deadline()` into account. Code that is not a handler (or not in that scope) can pass a Deadline
explicitly, e.g. `client.request("GET", path, deadline=Deadline.after(2.0))`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from .errors import DeadlineExceededError

# What a handler keeps for itself after the layer's last wait: flushing metrics and logs, building the answer.
DEFAULT_SAFETY_MARGIN_SECONDS = 1.0
# Below this a new network attempt cannot complete: connect plus a minimal answer on a good day.
MIN_ATTEMPT_SECONDS = 0.05

Monotonic = Callable[[], float]


class RemainingTime(Protocol):
    """What Lambda's context offers (and any test double with the same method)."""

    def get_remaining_time_in_millis(self) -> int: ...


@dataclass(frozen=True)
class Deadline:
    """A moment on the monotonic clock by which the current operation must be done."""

    at: float
    clock: Monotonic = field(default=time.monotonic, repr=False, compare=False)

    @classmethod
    def after(cls, seconds: float, *, clock: Monotonic = time.monotonic) -> Deadline:
        return cls(clock() + max(0.0, seconds), clock)

    @classmethod
    def never(cls) -> Deadline:
        return cls(math.inf)

    @classmethod
    def from_context(
        cls,
        context: RemainingTime,
        *,
        margin_seconds: float = DEFAULT_SAFETY_MARGIN_SECONDS,
        clock: Monotonic = time.monotonic,
    ) -> Deadline:
        """The invocation's remaining time minus a safety margin for answering."""
        remaining = context.get_remaining_time_in_millis() / 1000.0
        return cls.after(remaining - margin_seconds, clock=clock)

    def remaining(self) -> float:
        return max(0.0, self.at - self.clock())

    def expired(self) -> bool:
        return self.remaining() < MIN_ATTEMPT_SECONDS

    def cap(self, seconds: float) -> float:
        """`seconds`, or what is left if that is less (never negative)."""
        return min(seconds, self.remaining())

    def timeout(self, connect: float, read: float, *, what: str) -> tuple[float, float]:
        """An HTTP (connect, read) timeout that ends by the deadline; DeadlineExceededError if no time is left
        for even one attempt."""
        left = self.remaining()
        if left < MIN_ATTEMPT_SECONDS:
            raise DeadlineExceededError(what)
        return min(connect, left), min(read, left)

    def check(self, what: str) -> None:
        if self.expired():
            raise DeadlineExceededError(what)

    def earliest(self, other: Deadline | None) -> Deadline:
        if other is None or self.at <= other.at:
            return self
        return other


_current: ContextVar[Deadline | None] = ContextVar("usage_engine_deadline", default=None)


def current_deadline() -> Deadline:
    """The deadline of the innermost `deadline_scope`, or none at all outside one."""
    return _current.get() or Deadline.never()


@contextlib.contextmanager
def deadline_scope(deadline: Deadline) -> Iterator[Deadline]:
    """Bound every wait in the layer by `deadline` (nested scopes keep the earlier of the two)."""
    outer = _current.get()
    effective = deadline.earliest(outer)
    token = _current.set(effective)
    try:
        yield effective
    finally:
        _current.reset(token)


C = TypeVar("C")


class DeadlineBoundClient(Generic[C]):
    """A boto3 client, and what to use instead when the deadline is nearer than a call with it may take: a
    client whose attempts all end in time (`within(seconds)`), so a throttled call fails fast rather than past
    the deadline. botocore has no per-call timeout, hence a second client rather than an option."""

    def __init__(
        self, client: C, within: Callable[[float], C] | None = None, *, full_wait_seconds: float = 0.0
    ) -> None:
        self.client = client
        self._within = within
        # The longest one call can take with `client`'s own timeouts, retries and backoff.
        self._full_wait = full_wait_seconds

    def for_now(self, what: str, *, min_seconds: float = MIN_ATTEMPT_SECONDS) -> C:
        remaining = current_deadline().remaining()
        if remaining < min_seconds:
            raise DeadlineExceededError(what)
        if self._within is not None and remaining < self._full_wait:
            return self._within(remaining)
        return self.client
