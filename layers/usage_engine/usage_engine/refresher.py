"""The refresher's decision and run: refresh only when needed, never overwrite a good token with a bad one."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .clock import Clock, system_clock
from .credentials import ClientCredentials, parse_credentials
from .errors import (
    SECRET_BINARY_NOT_SUPPORTED,
    CredentialsError,
    RefreshFailedError,
    RefreshRequestError,
    SecretStoreError,
    UsageEngineError,
)
from .idp import ClientCredentialsExchange
from .secrets_manager import SecretsManagerSecret
from .settings import RefresherSettings
from .states import DecisionReason, RefreshReason, TokenProblem
from .token_store import StoredToken, TokenStore

__all__ = [
    "CredentialsSource",
    "Decision",
    "RefreshFailedError",
    "RefreshOutcome",
    "RefreshRequest",
    "TokenRefresher",
    "decide",
]

REASONS = tuple(RefreshReason)
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")


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


def decide(
    stored: StoredToken,
    request: RefreshRequest,
    *,
    now: float,
    margin_seconds: int,
    rejected_cooldown_seconds: int = 0,
) -> Decision:
    """Whether this run must call the IdP. Pure: the whole policy is here and unit-tested."""
    if request.reason == RefreshReason.FORCED:
        return Decision(True, DecisionReason.FORCED)
    if stored.token is None:
        missing = stored.problem == TokenProblem.MISSING
        return Decision(True, DecisionReason.MISSING if missing else DecisionReason.UNREADABLE)
    if request.reason == RefreshReason.REJECTED and request.token_fingerprint == stored.fingerprint:
        if now - stored.token.issued_at < rejected_cooldown_seconds:
            # A token this young being rejected points at the API or the setup, not at the token: replacing
            # it again and again would only hammer the IdP. Consumers get AuthenticationError instead.
            return Decision(False, DecisionReason.REJECTED_WITHIN_COOLDOWN)
        # Still the very token a consumer saw rejected; N consumers reporting it cause one IdP call,
        # because the first refresh replaces it and later reports no longer match.
        return Decision(True, DecisionReason.REJECTED)
    if stored.token.seconds_remaining(now) <= margin_seconds:
        return Decision(True, DecisionReason.EXPIRING)
    if request.reason == RefreshReason.REJECTED:
        return Decision(False, DecisionReason.REJECTED_TOKEN_ALREADY_REPLACED)
    return Decision(False, DecisionReason.FRESH)


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
        """The Lambda's return value (docs/contracts.md): never the token itself."""
        return {"refreshed": self.refreshed, "reason": str(self.reason), "expires_at": self.expires_at}


class CredentialsSource:
    def __init__(self, secret: SecretsManagerSecret) -> None:
        self._secret = secret

    def load(self) -> ClientCredentials:
        try:
            raw = self._secret.read()
        except SecretStoreError as error:
            if error.code != SECRET_BINARY_NOT_SUPPORTED:
                raise
            raise CredentialsError("(document)", "is a binary value, not a JSON string") from None
        if raw is None:
            raise CredentialsError("(secret)", f"{self._secret.secret_id} has no value yet")
        return parse_credentials(raw)


class TokenRefresher:
    def __init__(
        self,
        *,
        store: TokenStore,
        credentials: CredentialsSource,
        exchange: ClientCredentialsExchange,
        settings: RefresherSettings,
        clock: Clock = system_clock,
    ) -> None:
        self._store = store
        self._credentials = credentials
        self._exchange = exchange
        self._settings = settings
        self._clock = clock

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
            decision = decide(
                stored,
                request,
                now=now,
                margin_seconds=self._settings.refresh_margin_seconds,
                rejected_cooldown_seconds=self._settings.rejected_cooldown_seconds,
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
            credentials = self._credentials.load()
            issued = self._exchange.fetch(
                credentials,
                token_url=credentials.token_url or self._settings.token_url,
                audience=credentials.audience or self._settings.audience,
            )
            # Only a token that passed strict validation in the exchange reaches this write.
            version_id = self._store.save(issued.token)
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
