"""Token recovery: how a consumer gets a usable token back after expiry or a 401, without hammering anyone.

The client asks for a token and, after a 401, for a replacement; everything in between lives here: re-reading
the secret (another container may already have replaced the token), asking the refresher on demand, waiting
while it is busy, re-reading until the secret shows the token the refresher reported (read-your-write), and
holding off after a failed on-demand refresh. Every wait ends by the current deadline (`deadline_scope`).

Each step is logged under `usage_engine.recovery` with its facts as `extra` fields (tokens only by fingerprint):
INFO while it heals, WARNING when it holds off or cannot heal.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Protocol

from .clock import Clock, Sleep, system_clock, system_sleep
from .deadline import MIN_ATTEMPT_SECONDS, Deadline, current_deadline
from .errors import (
    DeadlineExceededError,
    RefreshHoldOffError,
    RefreshUnavailableError,
    TokenRejectedError,
    TokenUnavailableError,
)
from .provider import TokenProvider
from .refresh_requester import RefreshAnswer
from .states import RefreshReason, RefreshResult
from .token import AccessToken

# When the refresher is busy (reserved concurrency 1), wait with jitter and re-read the secret.
BUSY_ATTEMPTS = 6
BUSY_BASE_DELAY_SECONDS = 0.25
# After the refresher reported a new token, re-read until the secret shows it (a replica region or a cache
# can lag a write by seconds), at most this many times, backing off from this delay.
READ_YOUR_WRITE_ATTEMPTS = 5
READ_YOUR_WRITE_BASE_DELAY_SECONDS = 0.1
# After an on-demand refresh ended without a usable token, this container holds off for a jittered 75-100% of this
# (doubling with each failure in a row, see below): calls fail at once with RefreshHoldOffError (no secret read,
# no refresher call) unless the cache still has a usable token; the first call after the window probes again (one
# read, one refresher call). During an IdP outage longer than a token's lifetime that is at most one read and one
# invoke per window and container, instead of a read per call (benchmarks/RESULTS.md, fleet simulation).
REFRESH_HOLD_OFF_SECONDS = 30.0
# Consecutive failed on-demand refreshes double the window up to the refresher's schedule interval (its
# scheduled runs keep trying meanwhile): a long IdP outage costs a container one probe per few minutes instead
# of one per 15-30 s. The price: after the IdP recovers, a container in a long window picks up the token the
# schedule stored only when its window ends.
MAX_REFRESH_HOLD_OFF_SECONDS = 300.0
# After a 401, wait a random 0..this before re-reading the secret. A revocation reaches every container holding
# the token within the same moment: spread out, most re-reads come after the first refresh has stored a new
# token, so they need no refresher call (10,000 containers: 1.5 -> 1.1 reads each, slowest recovery 2.9 -> 1.5 s).
REJECTED_REREAD_JITTER_SECONDS = 0.5

logger = logging.getLogger(__name__)


class RefreshRequester(Protocol):
    def request(self, reason: RefreshReason, token_fingerprint: str | None = None) -> RefreshAnswer | str: ...


class TokenRecovery:
    """One per client (so per container): the hold-off is this container's memory of a failed refresh."""

    def __init__(
        self,
        tokens: TokenProvider,
        refresher: RefreshRequester | None = None,
        *,
        sleep: Sleep = system_sleep,
        clock: Clock = system_clock,
        busy_attempts: int = BUSY_ATTEMPTS,
    ) -> None:
        self.tokens = tokens
        self._refresher = refresher
        self._sleep = sleep
        self._clock = clock
        self._busy_attempts = busy_attempts
        self._hold_off_until = -math.inf
        self._failed_refreshes = 0

    def usable_token(self) -> AccessToken:
        """The cached or stored token; if it has expired, one from an on-demand refresh."""
        self._fail_fast_while_holding_off(RefreshReason.EXPIRED)
        try:
            token = self.tokens.get()
        except TokenUnavailableError:
            if self._refresher is None:
                raise
            return self._refresh_and_read(RefreshReason.EXPIRED, None)
        self._failed_refreshes = 0
        return token

    def replace_rejected(self, rejected: AccessToken) -> AccessToken:
        """A token other than `rejected`, or TokenRejectedError / TokenUnavailableError saying why not."""
        self.tokens.invalidate(rejected)
        self._fail_fast_while_holding_off(RefreshReason.REJECTED)
        self._wait(random.uniform(0, REJECTED_REREAD_JITTER_SECONDS), current_deadline())  # noqa: S311  # nosec B311 - jitter
        try:
            current = self.tokens.get()
            if current.value != rejected.value:
                # Another container already had it replaced: no refresher call needed.
                logger.info(
                    "Token secret already holds a replacement for the rejected token",
                    extra={"rejected_fingerprint": rejected.fingerprint, "token_fingerprint": current.fingerprint},
                )
                return current
        except TokenUnavailableError:
            pass
        if self._refresher is None:
            raise TokenRejectedError("token rejected and on-demand refresh is off (TOKEN_REFRESHER_FUNCTION)")
        token = self._refresh_and_read(RefreshReason.REJECTED, rejected)
        if token.value == rejected.value:
            raise TokenRejectedError("the refresher kept the rejected token (cooldown)")
        return token

    def holding_off(self) -> bool:
        return self._clock() < self._hold_off_until

    def _fail_fast_while_holding_off(self, reason: RefreshReason) -> None:
        if not self.holding_off():
            return
        cached = self.tokens.peek()
        if cached is not None and reason == RefreshReason.EXPIRED:
            return
        retry_after = max(0.0, self._hold_off_until - self._clock())
        logger.warning(
            "Holding off on-demand refreshes: no token for this call",
            extra={"reason": str(reason), "retry_after_seconds": round(retry_after, 1)},
        )
        raise RefreshHoldOffError(
            f"no valid token; an on-demand refresh ({reason}) failed moments ago, next attempt in {retry_after:.0f} s",
            retry_after_seconds=retry_after,
        )

    def _refresh_and_read(self, reason: RefreshReason, rejected: AccessToken | None) -> AccessToken:
        """Ask the refresher, then read the secret; while it is busy, back off with full jitter and re-read.

        When that ends without a token, the next calls within the hold-off fail fast instead of asking again.
        Running out of the invocation's time is not a failed refresh: it raises DeadlineExceededError and sets
        no hold-off.
        """
        refresher = self._refresher
        if refresher is None:
            raise TokenUnavailableError("no valid token and on-demand refresh is off (TOKEN_REFRESHER_FUNCTION)")
        try:
            token = self._ask_refresher_and_read(refresher, reason, rejected, current_deadline())
        except (TokenUnavailableError, RefreshUnavailableError) as error:
            self._hold_off(reason, error)
            raise
        self._failed_refreshes = 0
        return token

    def _hold_off(self, reason: RefreshReason, error: Exception) -> None:
        self._failed_refreshes += 1
        window = min(REFRESH_HOLD_OFF_SECONDS * 2 ** (self._failed_refreshes - 1), MAX_REFRESH_HOLD_OFF_SECONDS)
        # 75-100%: spread enough to keep a fleet's probes apart, long enough on average to keep an outage's
        # reads under 50 per 1,000 invocations (benchmarks/RESULTS.md, fleet simulation).
        jitter = random.uniform(0.75, 1.0)  # noqa: S311  # nosec B311 - jitter, not cryptography
        self._hold_off_until = self._clock() + jitter * window
        # The layer's error messages name tokens by fingerprint only (the leak tests hold them to that).
        logger.warning(
            "On-demand refresh failed; holding off",
            extra={
                "reason": str(reason),
                "retry_after_seconds": round(jitter * window, 1),
                "failed_refreshes": self._failed_refreshes,
                "error_type": type(error).__name__,
                "error": str(error),
            },
        )

    def _ask_refresher_and_read(
        self, refresher: RefreshRequester, reason: RefreshReason, rejected: AccessToken | None, deadline: Deadline
    ) -> AccessToken:
        fingerprint = rejected.fingerprint if rejected is not None else None
        last_problem = "the refresher did not produce a token"
        for attempt in range(self._busy_attempts):
            answer = _as_answer(refresher.request(reason, fingerprint))
            _log_answer(reason, answer, attempt, fingerprint)
            if rejected is not None:
                self.tokens.invalidate(rejected)
            if answer.token_fingerprint is not None:
                return self._read_until(answer.token_fingerprint, deadline)
            if answer.result == RefreshResult.BUSY and self._failed_refreshes:
                # A probe after a hold-off makes one read and one invoke. Another refresh is running: if it
                # stores a token, the next probe (or a read of the schedule's token then) picks it up.
                last_problem = "another refresh was running"
                break
            try:
                token = self.tokens.get()
            except TokenUnavailableError as error:
                last_problem = str(error)
            else:
                if rejected is None or token.value != rejected.value or answer.result != RefreshResult.BUSY:
                    return token
            if answer.result != RefreshResult.BUSY or attempt == self._busy_attempts - 1:
                break  # no sleep after the last attempt
            delay = random.uniform(0, BUSY_BASE_DELAY_SECONDS * 2**attempt)  # noqa: S311  # nosec B311 - jitter
            if deadline.remaining() < delay + MIN_ATTEMPT_SECONDS:
                raise DeadlineExceededError("waiting for the busy token refresher")
            self._sleep(delay)
        raise TokenUnavailableError(f"no valid token after asking the refresher ({reason}): {last_problem}")

    def _read_until(self, fingerprint: str, deadline: Deadline) -> AccessToken:
        """Re-read the secret until it holds the token the refresher reported (read-your-write)."""
        seen = "nothing"
        for attempt in range(READ_YOUR_WRITE_ATTEMPTS):
            try:
                token = self.tokens.get()
            except TokenUnavailableError as error:
                # A lagging read can still show the expired token the refresh replaced: not there yet.
                seen = f"no usable token ({error})"
                _log_reread(fingerprint, None, attempt)
            else:
                _log_reread(fingerprint, token.fingerprint, attempt)
                if token.fingerprint == fingerprint:
                    return token
                seen = f"token {token.fingerprint}"
                self.tokens.invalidate(token)
            if attempt == READ_YOUR_WRITE_ATTEMPTS - 1:
                break
            delay = READ_YOUR_WRITE_BASE_DELAY_SECONDS * 2**attempt
            if deadline.remaining() < delay + MIN_ATTEMPT_SECONDS:
                raise DeadlineExceededError(f"waiting for the token secret to show token {fingerprint}")
            self._sleep(delay)
        raise TokenUnavailableError(
            f"the refresher reported token {fingerprint} but the token secret still holds {seen} "
            f"after {READ_YOUR_WRITE_ATTEMPTS} reads (a replica or cache lagging behind)"
        )

    def _wait(self, seconds: float, deadline: Deadline) -> None:
        self._sleep(max(0.0, min(seconds, deadline.remaining() - MIN_ATTEMPT_SECONDS)))


def _log_answer(reason: RefreshReason, answer: RefreshAnswer, attempt: int, rejected_fingerprint: str | None) -> None:
    logger.info(
        "Asked the token refresher",
        extra={
            "reason": str(reason),
            "answer": str(answer.result),
            "refreshed": answer.result == RefreshResult.REFRESHED,
            "token_fingerprint": answer.token_fingerprint,
            "rejected_fingerprint": rejected_fingerprint,
            "attempt": attempt + 1,
        },
    )


def _log_reread(expected: str, seen: str | None, attempt: int) -> None:
    # seen None: the read found no usable token (a lagging read of the expired one, or none at all).
    logger.info(
        "Re-read the token secret after a refresh",
        extra={
            "expected_fingerprint": expected,
            "token_fingerprint": seen,
            "matched": seen == expected,
            "read": attempt + 1,
        },
    )


def _as_answer(answer: RefreshAnswer | str) -> RefreshAnswer:
    # A requester may answer with a bare result (older custom requesters, test doubles).
    return answer if isinstance(answer, RefreshAnswer) else RefreshAnswer(RefreshResult(answer))
