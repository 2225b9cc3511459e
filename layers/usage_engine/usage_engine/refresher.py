"""The refresher's decision and run: refresh only when needed, never overwrite a good token with a bad one, and
never let a persistent failure turn into a stream of IdP requests and secret versions."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .clock import Clock, system_clock
from .credentials import ClientCredentials, parse_credentials
from .errors import (
    SECRET_BINARY_NOT_SUPPORTED,
    CredentialsError,
    CredentialsRejectedError,
    IdpRejectedError,
    RefreshFailedError,
    RefreshRequestError,
    SecretStoreError,
    UsageEngineError,
)
from .idp import ClientCredentialsExchange, IssuedToken
from .secrets_manager import SecretsManagerSecret
from .settings import RefresherSettings
from .states import DecisionReason, RefreshReason, TokenProblem
from .token import MAX_REJECTION_STREAK, NO_RECORD, AccessToken, RefreshRecord
from .token_store import StoredToken, TokenStore

__all__ = [
    "CredentialsRejectedError",
    "CredentialsRejection",
    "CredentialsSource",
    "Decision",
    "ForcedAttempt",
    "RefreshFailedError",
    "RefreshOutcome",
    "RefreshRequest",
    "RefresherMemory",
    "TokenRefresher",
    "backoff_seconds",
    "decide",
    "forced_refresh_allowed",
    "next_record",
    "rejection_cooldown",
]

REASONS = tuple(RefreshReason)
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")
# Consumers ask for these; they never retry credentials the IdP has rejected.
ON_DEMAND = frozenset({RefreshReason.EXPIRED, RefreshReason.REJECTED})
# Minted on demand: a rejection of such a token while a streak is open waits for the backoff.
_STREAK_REASONS = frozenset({DecisionReason.REJECTED, DecisionReason.FORCED})
# 2**30 base periods is decades: a longer streak cannot lengthen a wait that its cap already bounds.
_MAX_DOUBLINGS = 30


@dataclass(frozen=True)
class RefreshRequest:
    reason: RefreshReason = RefreshReason.SCHEDULED
    token_fingerprint: str | None = None

    @classmethod
    def from_event(cls, event: Any) -> RefreshRequest:
        """`{}`, the scheduler's payload, or an on-demand `{"reason": ..., "token_fingerprint": ...}`."""
        if event is None:
            return cls()
        if not isinstance(event, Mapping):
            raise RefreshRequestError("the event must be a JSON object")
        reason = event.get("reason")
        if reason is None:
            # An EventBridge schedule without Input delivers its own envelope: that is a scheduled run.
            return cls()
        if not isinstance(reason, str) or reason not in REASONS:
            raise RefreshRequestError(f"reason must be one of {', '.join(REASONS)}")
        token_fingerprint = event.get("token_fingerprint")
        if reason == RefreshReason.REJECTED:
            if not isinstance(token_fingerprint, str) or not _FINGERPRINT.fullmatch(token_fingerprint):
                raise RefreshRequestError("reason 'rejected' needs token_fingerprint (16 lowercase hex)")
            return cls(RefreshReason.REJECTED, token_fingerprint)
        return cls(RefreshReason(reason))


@dataclass(frozen=True)
class Decision:
    refresh: bool
    reason: DecisionReason


def backoff_seconds(count: int, *, base: float, cap: float) -> float:
    """base * 2**(count - 1), at most `cap`, never negative; no wait before the first."""
    if count < 1:
        return 0.0
    return max(0.0, min(base * (1 << min(count - 1, _MAX_DOUBLINGS)), cap))


def open_streak(record: RefreshRecord) -> int:
    """The rejection streak a token continues: only tokens minted on demand carry one."""
    return record.rejection_streak if record.minted_for in _STREAK_REASONS else 0


def rejection_cooldown(token: AccessToken, *, base: float, margin_seconds: float) -> float:
    """How old `token` must be before a rejection of it is honoured. Only a token minted in answer to a rejection
    (or forced while rejections went on) waits: the first rejection of any other token is honoured at any age,
    because a token revoked right after a scheduled refresh must not leave every consumer failing."""
    # Past its normal replacement age the token is replaced as expiring anyway: the schedule governs.
    normal_age = token.expires_at - token.issued_at - margin_seconds
    return backoff_seconds(open_streak(token.record), base=base, cap=normal_age)


def decide(
    stored: StoredToken,
    request: RefreshRequest,
    *,
    now: float,
    margin_seconds: int,
    rejected_cooldown_seconds: int = 0,
    forced_allowed: bool = True,
) -> Decision:
    """Whether this run must call the IdP. Pure: the whole policy is here and unit-tested."""
    if request.reason == RefreshReason.FORCED:
        if forced_allowed:
            return Decision(True, DecisionReason.FORCED)
        # Too soon for another forced IdP request: the run does what a scheduled one would.
        scheduled = decide(stored, RefreshRequest(), now=now, margin_seconds=margin_seconds)
        return scheduled if scheduled.refresh else Decision(False, DecisionReason.FORCED_TOO_SOON)
    if stored.token is None:
        missing = stored.problem == TokenProblem.MISSING
        return Decision(True, DecisionReason.MISSING if missing else DecisionReason.UNREADABLE)
    token = stored.token
    expiring = token.seconds_remaining(now) <= margin_seconds
    if request.reason == RefreshReason.REJECTED and request.token_fingerprint == token.fingerprint:
        if expiring:
            # Due for its normal replacement anyway, which also ends any run of rejections.
            return Decision(True, DecisionReason.EXPIRING)
        if now - token.issued_at < rejection_cooldown(
            token, base=rejected_cooldown_seconds, margin_seconds=margin_seconds
        ):
            # Tokens minted in answer to rejections keep being rejected: the API or the setup is at fault, not
            # the token. Replacing them every time would cost an IdP request and a secret version each.
            return Decision(False, DecisionReason.REJECTED_WITHIN_COOLDOWN)
        # Still the very token a consumer saw rejected; N consumers reporting it cause one IdP call,
        # because the first refresh replaces it and later reports no longer match.
        return Decision(True, DecisionReason.REJECTED)
    if expiring:
        return Decision(True, DecisionReason.EXPIRING)
    if request.reason == RefreshReason.REJECTED:
        return Decision(False, DecisionReason.REJECTED_TOKEN_ALREADY_REPLACED)
    return Decision(False, DecisionReason.FRESH)


@dataclass(frozen=True)
class ForcedAttempt:
    at: float
    credentials_version: str | None


def forced_refresh_allowed(
    stored: StoredToken,
    attempt: ForcedAttempt | None,
    *,
    credentials_version: str | None,
    now: float,
    interval_seconds: float,
) -> bool:
    """At most one forced IdP request per interval and credentials version: every consumer may invoke `forced`,
    and none may spend the IdP's rate limit. New credentials (an operator's `make set-credentials`) lift it.

    `attempt` is this container's last forced request (it counts even when it failed); the token secret's
    `forced_at` is the last one that succeeded, and outlives the container."""
    recent = [attempt] if attempt is not None else []
    record = stored.token.record if stored.token is not None else NO_RECORD
    if record.forced_at is not None:
        recent.append(ForcedAttempt(record.forced_at, record.credentials_version))
    return not any(0 <= now - a.at < interval_seconds and a.credentials_version == credentials_version for a in recent)


def next_record(
    stored: StoredToken,
    reason: DecisionReason,
    *,
    now: float,
    credentials_version: str | None,
    forced_interval_seconds: float,
) -> RefreshRecord:
    """The notes written with a new token: why it was minted, the rejection streak it continues, and the last
    forced refresh while that still limits the next one."""
    previous = stored.token.record if stored.token is not None else NO_RECORD
    same_credentials = previous.credentials_version == credentials_version
    forced_at = previous.forced_at
    if forced_at is None or not same_credentials or not 0 <= now - forced_at < forced_interval_seconds:
        forced_at = None
    if reason == DecisionReason.REJECTED:
        streak = open_streak(previous) + 1
    elif reason == DecisionReason.FORCED:
        forced_at = int(now)
        # With the same credentials a forced refresh keeps the streak, so that alternating `forced` and
        # `rejected` cannot skip the backoff; an operator's new credentials start afresh.
        streak = open_streak(previous) if same_credentials else 0
    else:
        # A scheduled, expiring or repairing refresh: whatever went on before, the next rejection is news.
        streak = 0
    return RefreshRecord(
        minted_for=reason,
        rejection_streak=min(streak, MAX_REJECTION_STREAK),
        credentials_version=credentials_version,
        forced_at=forced_at,
    )


@dataclass(frozen=True)
class CredentialsRejection:
    """The IdP rejected the token request made with this credentials version `count` times in a row."""

    credentials_version: str | None
    at: float
    count: int
    status: int | None
    reason: str

    def retry_at(self, *, base: float, cap: float) -> float:
        return self.at + backoff_seconds(self.count, base=base, cap=cap)


@dataclass
class RefresherMemory:
    """What the refresher remembers between runs in its container: failures, which write nothing, so the token
    secret cannot carry them without a PutSecretValue per failure (a failed refresh leaves the secret as it
    was). With reserved concurrency 1 the one warm container sees every run; a new container forgets, which
    costs at most one IdP request before it knows again (and restarts the scheduled retries' backoff)."""

    credentials_rejection: CredentialsRejection | None = None
    forced_attempt: ForcedAttempt | None = None


@dataclass(frozen=True)
class RefreshOutcome:
    refreshed: bool
    reason: DecisionReason
    expires_at: int
    seconds_remaining: float
    token_fingerprint: str
    idp_latency_ms: float | None = None
    idp_attempts: int = 0
    version_id: str | None = None

    def response(self) -> dict[str, Any]:
        """The Lambda's return value (docs/contracts.md): the token's fingerprint, never the token itself."""
        return {
            "refreshed": self.refreshed,
            "reason": str(self.reason),
            "expires_at": self.expires_at,
            "token_fingerprint": self.token_fingerprint,
        }


class CredentialsSource:
    def __init__(self, secret: SecretsManagerSecret) -> None:
        self._secret = secret

    def load(self) -> ClientCredentials:
        return self.load_with_version()[0]

    def load_with_version(self) -> tuple[ClientCredentials, str | None]:
        """The credentials and the VersionId of the secret they came from (which tells new credentials apart)."""
        try:
            raw, version_id = self._secret.read_with_version()
        except SecretStoreError as error:
            if error.code != SECRET_BINARY_NOT_SUPPORTED:
                raise
            raise CredentialsError("(document)", "is a binary value, not a JSON string") from None
        if raw is None:
            raise CredentialsError("(secret)", f"{self._secret.secret_id} has no value yet")
        return parse_credentials(raw), version_id


class TokenRefresher:
    def __init__(
        self,
        *,
        store: TokenStore,
        credentials: CredentialsSource,
        exchange: ClientCredentialsExchange,
        settings: RefresherSettings,
        clock: Clock = system_clock,
        memory: RefresherMemory | None = None,
    ) -> None:
        self._store = store
        self._credentials = credentials
        self._exchange = exchange
        self._settings = settings
        self._clock = clock
        # The composition root hands every refresher of a container the container's memory; a refresher built
        # by hand remembers for its own lifetime.
        self.memory = memory if memory is not None else RefresherMemory()

    @classmethod
    def from_settings(cls, settings: RefresherSettings, *, clock: Clock = system_clock) -> TokenRefresher:
        """The container's refresher for these settings (see composition.py)."""
        from .composition import components  # deferred: the composition root builds this module's objects

        return components().refresher(settings, clock=clock)

    def run(self, request: RefreshRequest) -> RefreshOutcome:
        stored: StoredToken | None = None
        reason: str = request.reason
        try:
            stored = self._store.load()
            now = self._clock()
            # A forced run needs the credentials' version before deciding: new credentials lift the limit.
            loaded = self._credentials.load_with_version() if request.reason == RefreshReason.FORCED else None
            decision = decide(
                stored,
                request,
                now=now,
                margin_seconds=self._settings.refresh_margin_seconds,
                rejected_cooldown_seconds=self._settings.rejected_cooldown_seconds,
                forced_allowed=loaded is None or self._forced_allowed(stored, loaded[1], now),
            )
            reason = decision.reason
            if not decision.refresh and stored.token is not None:
                return RefreshOutcome(
                    refreshed=False,
                    reason=decision.reason,
                    expires_at=stored.token.expires_at,
                    seconds_remaining=stored.token.seconds_remaining(now),
                    token_fingerprint=stored.token.fingerprint,
                )
            credentials, credentials_version = loaded or self._credentials.load_with_version()
            self._refuse_remembered_rejection(request, decision, credentials_version, now)
            issued = self._fetch(credentials, credentials_version, forced=decision.reason == DecisionReason.FORCED)
            record = next_record(
                stored,
                decision.reason,
                now=now,
                credentials_version=credentials_version,
                forced_interval_seconds=self._settings.forced_interval_seconds,
            )
            # Only a token that passed strict validation in the exchange reaches this write.
            version_id = self._store.save(replace(issued.token, record=record))
        except UsageEngineError as error:
            remaining = stored.token.seconds_remaining(self._clock()) if stored and stored.token else None
            raise RefreshFailedError(reason, error, remaining) from error
        return RefreshOutcome(
            refreshed=True,
            reason=decision.reason,
            expires_at=issued.token.expires_at,
            seconds_remaining=issued.token.seconds_remaining(self._clock()),
            token_fingerprint=issued.token.fingerprint,
            idp_latency_ms=issued.latency_ms,
            idp_attempts=issued.attempts,
            version_id=version_id,
        )

    def _forced_allowed(self, stored: StoredToken, credentials_version: str | None, now: float) -> bool:
        return forced_refresh_allowed(
            stored,
            self.memory.forced_attempt,
            credentials_version=credentials_version,
            now=now,
            interval_seconds=self._settings.forced_interval_seconds,
        )

    def _refuse_remembered_rejection(
        self, request: RefreshRequest, decision: Decision, credentials_version: str | None, now: float
    ) -> None:
        """Fail fast, without an IdP request, while the IdP's rejection of these very credentials stands."""
        rejection = self.memory.credentials_rejection
        if rejection is None or rejection.credentials_version != credentials_version:
            return
        if decision.reason == DecisionReason.FORCED:
            return  # an operator asks to try again (and forced requests have their own limit)
        if request.reason in ON_DEMAND:
            raise _rejected(rejection, now=now, retry_in=None)
        retry_at = rejection.retry_at(
            base=self._settings.rejected_cooldown_seconds, cap=self._settings.credentials_retry_cap_seconds
        )
        if now < retry_at:
            raise _rejected(rejection, now=now, retry_in=retry_at - now)

    def _fetch(self, credentials: ClientCredentials, credentials_version: str | None, *, forced: bool) -> IssuedToken:
        if forced:
            # Counted before the request: a forced request that fails has spent the IdP's rate limit too.
            self.memory.forced_attempt = ForcedAttempt(self._clock(), credentials_version)
        try:
            issued = self._exchange.fetch(
                credentials,
                token_url=credentials.token_url or self._settings.token_url,
                audience=credentials.audience or self._settings.audience,
            )
        except IdpRejectedError as error:
            previous = self.memory.credentials_rejection
            same = previous is not None and previous.credentials_version == credentials_version
            self.memory.credentials_rejection = CredentialsRejection(
                credentials_version=credentials_version,
                at=self._clock(),
                count=previous.count + 1 if previous is not None and same else 1,
                status=error.status,
                reason=error.reason,
            )
            raise
        self.memory.credentials_rejection = None
        return issued


def _rejected(rejection: CredentialsRejection, *, now: float, retry_in: float | None) -> CredentialsRejectedError:
    return CredentialsRejectedError(
        credentials_version=rejection.credentials_version,
        count=rejection.count,
        status=rejection.status,
        reason=rejection.reason,
        seconds_ago=now - rejection.at,
        retry_in=retry_in,
    )
