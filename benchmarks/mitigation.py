"""The layer changes proposed in benchmarks/README.md ("Findings"), applied by monkeypatching so `make bench` can
show the fleet's numbers before and after them. Once the layer has them, nothing is patched.

1. Jitter before re-reading the secret after a 401 (`REJECTED_REREAD_JITTER_SECONDS`, 0-0.5 s): a revocation
   reaches every container at once; spread out, most re-reads come after the first refresh stored a new token.
2. Hold-off after a failed on-demand refresh (`REFRESH_HOLD_OFF_SECONDS`, a jittered 15-30 s): the container
   does not ask the refresher again meanwhile; its invocations still read the secret and fail fast. Without it,
   during an IdP outage longer than a token's lifetime every invocation runs the whole busy loop.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator

from usage_engine import api_client
from usage_engine.api_client import UsageEngineClient
from usage_engine.errors import RefreshUnavailableError, TokenUnavailableError
from usage_engine.token import AccessToken

REJECTED_REREAD_JITTER_SECONDS = 0.5
REFRESH_HOLD_OFF_SECONDS = 30.0


def already_applied() -> bool:
    return hasattr(api_client, "REJECTED_REREAD_JITTER_SECONDS") and hasattr(api_client, "REFRESH_HOLD_OFF_SECONDS")


@contextlib.contextmanager
def proposed_layer_changes() -> Iterator[bool]:
    """Patch UsageEngineClient as the proposed diff changes it; yields False when the layer already has it."""
    if already_applied():
        yield False
        return
    replace_rejected = UsageEngineClient._replace_rejected
    refresh_and_read = UsageEngineClient._refresh_and_read

    def _replace_rejected(self: UsageEngineClient, method: str, path: str, rejected: AccessToken) -> AccessToken:
        self.tokens.invalidate(rejected)
        self._sleep(random.uniform(0, REJECTED_REREAD_JITTER_SECONDS))
        return replace_rejected(self, method, path, rejected)

    def _refresh_and_read(self: UsageEngineClient, reason: str, rejected: AccessToken | None) -> AccessToken:
        clock = self.tokens._clock  # the diff gives UsageEngineClient its own `clock` parameter instead
        if self._refresher is not None and clock() < getattr(self, "_hold_off_until", -math.inf):
            raise TokenUnavailableError(f"no valid token; an on-demand refresh ({reason}) failed moments ago")
        try:
            return refresh_and_read(self, reason, rejected)
        except (TokenUnavailableError, RefreshUnavailableError):
            self._hold_off_until = clock() + random.uniform(0.5, 1.0) * REFRESH_HOLD_OFF_SECONDS  # type: ignore[attr-defined]
            raise

    UsageEngineClient._replace_rejected = _replace_rejected  # type: ignore[method-assign]
    UsageEngineClient._refresh_and_read = _refresh_and_read  # type: ignore[method-assign]
    try:
        yield True
    finally:
        UsageEngineClient._replace_rejected = replace_rejected  # type: ignore[method-assign]
        UsageEngineClient._refresh_and_read = refresh_and_read  # type: ignore[method-assign]
