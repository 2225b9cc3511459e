"""Token recovery: how a consumer gets a usable token back after expiry or a 401, without hammering anyone.

The client asks for a token and, after a 401, for a replacement; everything in between lives here: re-reading
the secret (another container may already have replaced the token), asking the refresher on demand, waiting
while it is busy, and holding off after a failed on-demand refresh.
"""

from __future__ import annotations

import math
import random
from typing import Protocol

from .clock import Clock, Sleep, system_clock, system_sleep
from .errors import RefreshUnavailableError, TokenRejectedError, TokenUnavailableError
from .provider import TokenProvider
from .states import RefreshReason, RefreshResult
from .token import AccessToken

# When the refresher is busy (reserved concurrency 1), wait with jitter and re-read the secret.
BUSY_ATTEMPTS = 6
BUSY_BASE_DELAY_SECONDS = 0.25
# After an on-demand refresh ended without a usable token, this container does not ask the refresher again for
# a jittered 50-100% of this: its invocations still read the secret (and so pick up a token the schedule or
# another container stored) but fail fast. Without it, during an IdP outage longer than a token's lifetime every
# invocation runs the whole busy loop (up to 6 GetSecretValue and 12 Invoke calls): at fleet scale that nears
# the account's GetSecretValue quota (benchmarks/RESULTS.md).
REFRESH_HOLD_OFF_SECONDS = 30.0
# After a 401, wait a random 0..this before re-reading the secret. A revocation reaches every container holding
# the token within the same moment: spread out, most re-reads come after the first refresh has stored a new
# token, so they need no refresher call (10,000 containers: 1.5 -> 1.1 reads each, slowest recovery 2.9 -> 1.5 s).
REJECTED_REREAD_JITTER_SECONDS = 0.5


class RefreshRequester(Protocol):
    def request(self, reason: RefreshReason, token_fingerprint: str | None = None) -> RefreshResult: ...


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

    def usable_token(self) -> AccessToken:
        """The cached or stored token; if it has expired, one from an on-demand refresh."""
        try:
            return self.tokens.get()
        except TokenUnavailableError:
            if self._refresher is None:
                raise
        return self._refresh_and_read(RefreshReason.EXPIRED, None)

    def replace_rejected(self, rejected: AccessToken) -> AccessToken:
        """A token other than `rejected`, or TokenRejectedError / TokenUnavailableError saying why not."""
        self.tokens.invalidate(rejected)
        self._sleep(random.uniform(0, REJECTED_REREAD_JITTER_SECONDS))  # noqa: S311  # nosec B311 - jitter
        try:
            current = self.tokens.get()
            if current.value != rejected.value:
                # Another container already had it replaced: no refresher call needed.
                return current
        except TokenUnavailableError:
            pass
        if self._refresher is None:
            raise TokenRejectedError("token rejected and on-demand refresh is off (TOKEN_REFRESHER_FUNCTION)")
        token = self._refresh_and_read(RefreshReason.REJECTED, rejected)
        if token.value == rejected.value:
            raise TokenRejectedError("the refresher kept the rejected token (cooldown)")
        return token

    def _refresh_and_read(self, reason: RefreshReason, rejected: AccessToken | None) -> AccessToken:
        """Ask the refresher, then read the secret; while it is busy, back off with full jitter and re-read.

        When that ends without a token, the next calls within the hold-off fail fast instead of asking again.
        """
        refresher = self._refresher
        if refresher is None:
            raise TokenUnavailableError("no valid token and on-demand refresh is off (TOKEN_REFRESHER_FUNCTION)")
        if self._clock() < self._hold_off_until:
            raise TokenUnavailableError(f"no valid token; an on-demand refresh ({reason}) failed moments ago")
        try:
            return self._ask_refresher_and_read(refresher, reason, rejected)
        except (TokenUnavailableError, RefreshUnavailableError):
            jitter = random.uniform(0.5, 1.0)  # noqa: S311  # nosec B311 - jitter, not cryptography
            self._hold_off_until = self._clock() + jitter * REFRESH_HOLD_OFF_SECONDS
            raise

    def _ask_refresher_and_read(
        self, refresher: RefreshRequester, reason: RefreshReason, rejected: AccessToken | None
    ) -> AccessToken:
        fingerprint = rejected.fingerprint if rejected is not None else None
        last_problem = "the refresher did not produce a token"
        for attempt in range(self._busy_attempts):
            result = refresher.request(reason, fingerprint)
            if rejected is not None:
                self.tokens.invalidate(rejected)
            try:
                token = self.tokens.get()
            except TokenUnavailableError as error:
                last_problem = str(error)
            else:
                if rejected is None or token.value != rejected.value or result != RefreshResult.BUSY:
                    return token
            if result != RefreshResult.BUSY:
                break
            self._sleep(random.uniform(0, BUSY_BASE_DELAY_SECONDS * 2**attempt))  # noqa: S311  # nosec B311 - jitter, not cryptography
        raise TokenUnavailableError(f"no valid token after asking the refresher ({reason}): {last_problem}")
