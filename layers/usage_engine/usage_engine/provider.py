"""TokenProvider: the consumers' view of the token secret, cached in memory until near expiry."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from .clock import Clock, system_clock
from .errors import TokenUnavailableError
from .settings import DEFAULT_TOKEN_EXPIRY_SKEW_SECONDS
from .token import AccessToken
from .token_store import TokenStore

logger = logging.getLogger(__name__)


@dataclass
class _Flight:
    """One secret read in progress, and its outcome for every thread that waited for it."""

    done: threading.Event = field(default_factory=threading.Event)
    token: AccessToken | None = None
    error: BaseException | None = None


class TokenProvider:
    """Thread-safe, expiry-aware cache of the stored token.

    Warm invocations are served from memory; concurrent callers on a cold or stale cache wait for one
    GetSecretValue (single flight) instead of each reading the secret.
    """

    def __init__(
        self,
        store: TokenStore,
        *,
        clock: Clock = system_clock,
        expiry_skew_seconds: int = DEFAULT_TOKEN_EXPIRY_SKEW_SECONDS,
    ) -> None:
        self._store = store
        self._clock = clock
        self._skew = expiry_skew_seconds
        self._lock = threading.Lock()
        self._cached: AccessToken | None = None
        self._flight: _Flight | None = None

    @classmethod
    def from_env(cls, connection: str | None = None) -> TokenProvider:
        """The container's shared provider of `connection` (None: the default connection; see
        ConsumerSettings.from_env), from the environment read now, not at import. Connections that name the
        same token secret share one provider."""
        from .composition import components  # deferred: the composition root builds this module's objects

        return components().provider_from_env(connection)

    def get(self) -> AccessToken:
        cached = self._cached
        if cached is not None and cached.is_usable(self._clock(), skew_seconds=self._skew):
            return cached
        with self._lock:
            # Another thread may have loaded it while this one waited for the lock.
            cached = self._cached
            if cached is not None and cached.is_usable(self._clock(), skew_seconds=self._skew):
                return cached
            flight = self._flight
            leader = flight is None
            if flight is None:
                flight = self._flight = _Flight()
        if not leader:
            # Single flight: the waiters share the leader's outcome, a token or its error, instead of each
            # repeating a read that just failed (5 waiters on a 1 s failure would otherwise take 1+2+...+5 s).
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.token is None:  # only if the leader died of something other than an exception
                raise TokenUnavailableError(f"reading token secret {self._store.secret_id} did not finish")
            return flight.token
        try:
            flight.token = self._load()
        except BaseException as error:
            flight.error = error
            raise
        finally:
            with self._lock:
                self._flight = None
            flight.done.set()
        return flight.token

    def peek(self) -> AccessToken | None:
        """The cached token if it is still usable, without reading the secret (never any I/O)."""
        cached = self._cached
        if cached is not None and cached.is_usable(self._clock(), skew_seconds=self._skew):
            return cached
        return None

    def _load(self) -> AccessToken:
        stored = self._store.load()
        if stored.token is None:
            raise TokenUnavailableError(f"token secret {self._store.secret_id} is {stored.describe()}")
        if not stored.token.is_usable(self._clock(), skew_seconds=self._skew):
            # The start of a recovery (an on-demand refresh follows), or a sign the scheduled refresh fell behind.
            logger.info(
                "Stored token expired or about to",
                extra={
                    "token_fingerprint": stored.token.fingerprint,
                    "expires_in_seconds": round(stored.token.seconds_remaining(self._clock())),
                    "expiry_skew_seconds": self._skew,
                },
            )
            raise TokenUnavailableError(
                f"stored token {stored.token.fingerprint} expired or expires within {self._skew} s"
            )
        with self._lock:
            self._cached = stored.token
        return stored.token

    def invalidate(self, token: AccessToken | str) -> bool:
        """Forget `token` (after the API rejected it). Returns whether it was the cached one.

        Only that exact token is dropped, so a late report about an old token cannot evict a fresh one.
        """
        value = token.value if isinstance(token, AccessToken) else token
        with self._lock:
            if self._cached is not None and self._cached.value == value:
                self._cached = None
                return True
            return False
