"""requests sessions with urllib3's bounded retries: exponential backoff, jitter, a capped Retry-After.

Works with urllib3 1.26 and 2.x: the layer uses the urllib3 of the Lambda runtime (botocore's), whichever
it is, instead of shipping its own copy (which would shadow the runtime's compiled one for botocore too).
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection
from typing import Any, Self

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (
    ConnectTimeoutError,
    InvalidHeader,
    MaxRetryError,
    NewConnectionError,
    ReadTimeoutError,
    ResponseError,
)
from urllib3.util.retry import Retry
from urllib3.util.timeout import Timeout

from .deadline import MIN_ATTEMPT_SECONDS, Deadline, current_deadline


class CappedRetry(Retry):
    """urllib3's Retry, with Retry-After capped so a server cannot park a Lambda until its timeout, and no
    retry that the current deadline (`deadline_scope`) leaves no time for: the last answer (or error) is
    returned instead of sleeping into the Lambda timeout."""

    MAX_RETRY_AFTER_SECONDS = 10.0
    # Jitter and this cap are applied here rather than with urllib3 2's backoff_jitter/backoff_max, which
    # urllib3 1.26 does not have.
    MAX_BACKOFF_SECONDS = 8.0

    def get_backoff_time(self) -> float:
        """0 before the first retry, then factor x 2^(n-1) plus up to `factor` of jitter, at most 8 s."""
        base = super().get_backoff_time()
        if base <= 0:
            return 0.0
        return min(base + random.random() * self.backoff_factor, self.MAX_BACKOFF_SECONDS)  # noqa: S311  # nosec B311

    def longest_backoff(self) -> float:
        """The most `get_backoff_time()` can draw now (its jitter at the top)."""
        base = super().get_backoff_time()
        return 0.0 if base <= 0 else min(base + self.backoff_factor, self.MAX_BACKOFF_SECONDS)

    def parse_retry_after(self, retry_after: str) -> float:
        """urllib3 accepts whole seconds or an HTTP date and raises on anything else, which would abort every
        remaining retry. A fractional or negative number is clamped; other garbage means "no hint" (0), and
        the ordinary exponential backoff applies."""
        try:
            return super().parse_retry_after(retry_after)
        except InvalidHeader:
            try:
                seconds = float(retry_after)
            except ValueError:
                return 0.0
            return min(max(seconds, 0.0), self.MAX_RETRY_AFTER_SECONDS) if math.isfinite(seconds) else 0.0

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> Self:
        new_retry = super().increment(method, url, response, error, _pool, _stacktrace)
        wait = _planned_wait(new_retry, response)
        if current_deadline().remaining() < wait + MIN_ATTEMPT_SECONDS:
            # The same exception urllib3 raises when the budget is spent: for a status retry it hands back the
            # last response (raise_on_status=False); for an error the caller sees that error.
            reason = error or ResponseError(f"no time left to retry HTTP {getattr(response, 'status', '?')}")
            raise MaxRetryError(_pool, url or "", reason) from reason
        return new_retry

    def get_retry_after(self, response: Any) -> float | None:
        retry_after = super().get_retry_after(response)
        if retry_after is None:
            return None
        return min(retry_after, self.MAX_RETRY_AFTER_SECONDS)


def _planned_wait(retry: CappedRetry, response: Any) -> float:
    if response is not None and retry.respect_retry_after_header:
        retry_after = retry.get_retry_after(response)
        if retry_after:
            return retry_after
    # Backoff with its jitter is drawn at sleep time; the estimate is its upper bound.
    return retry.longest_backoff()


class DeadlineTimeout(Timeout):
    """A (connect, read) timeout that never reaches past the deadline: urllib3 clones the timeout for every
    attempt, retries included, so each attempt gets what is left at its own start."""

    def __init__(self, connect: float, read: float, deadline: Deadline) -> None:
        super().__init__(connect=connect, read=read)
        self._base = (connect, read)
        self._deadline = deadline

    def clone(self) -> Timeout:
        left = max(self._deadline.remaining(), MIN_ATTEMPT_SECONDS)
        connect, read = self._base
        return Timeout(connect=min(connect, left), read=min(read, left))


def deadline_timeout(connect: float, read: float, *, what: str, deadline: Deadline | None = None) -> Timeout:
    """The timeout to pass to requests for one call under `deadline` (default: the current one).
    DeadlineExceededError when not even one attempt fits."""
    deadline = deadline or current_deadline()
    deadline.check(what)
    return DeadlineTimeout(connect, read, deadline)


def bounded_retry(
    *,
    max_retries: int,
    methods: Collection[str],
    statuses: Collection[int],
    backoff_factor: float = 0.5,
) -> Retry:
    # urllib3 sleeps 0 before the first retry, then factor x 2^(n-1) plus up to `factor` of jitter (CappedRetry).
    return CappedRetry(
        total=max_retries,
        connect=max_retries,
        read=max_retries,
        status=max_retries,
        other=0,
        redirect=0,
        allowed_methods=frozenset(methods),
        status_forcelist=frozenset(statuses),
        backoff_factor=backoff_factor,
        respect_retry_after_header=True,
        raise_on_status=False,
    )


def retrying_session(retry: Retry, *, pool_maxsize: int = 10) -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=pool_maxsize)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def attempts_of(response: requests.Response) -> int:
    """How many HTTP attempts urllib3 made for this response (1 + its retries)."""
    retries = getattr(response.raw, "retries", None)
    return len(getattr(retries, "history", ())) + 1


def describe_failure(error: requests.exceptions.RequestException) -> str:
    # Exception texts can carry the URL; the form body (with the secret) is never part of them.
    # After the retry budget, requests wraps the last cause in MaxRetryError: report that cause.
    cause = getattr(error.args[0], "reason", None) if error.args else None
    # urllib3's NewConnectionError subclasses ConnectTimeoutError, so it is told apart first.
    if isinstance(cause, NewConnectionError):
        return "connection failed"
    if isinstance(error, requests.exceptions.ConnectTimeout) or isinstance(cause, ConnectTimeoutError):
        return "connect timeout"
    if isinstance(error, requests.exceptions.ReadTimeout) or isinstance(cause, ReadTimeoutError):
        return "read timeout"
    if isinstance(error, requests.exceptions.ConnectionError):
        return "connection failed"
    return type(error).__name__
