"""The refresher's decision and run: refresh only when needed, never overwrite a good token with a bad one."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .aws_clients import secrets_manager_client
from .clock import Clock, system_clock
from .credentials import ClientCredentials, parse_credentials
from .errors import CredentialsError, RefreshRequestError, SecretStoreError, UsageEngineError
from .idp import ClientCredentialsExchange
from .secrets_manager import SECRET_BINARY_NOT_SUPPORTED, SecretsManagerSecret
from .settings import RefresherSettings
from .token_store import StoredToken, TokenStore

REASONS = ("scheduled", "expired", "rejected", "forced")
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class RefreshRequest:
    reason: str = "scheduled"
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
        if reason not in REASONS:
            raise RefreshRequestError(f"reason must be one of {', '.join(REASONS)}")
        token_fingerprint = event.get("token_fingerprint")
        if reason == "rejected":
            if not isinstance(token_fingerprint, str) or not _FINGERPRINT.fullmatch(token_fingerprint):
                raise RefreshRequestError("reason 'rejected' needs token_fingerprint (16 lowercase hex)")
            return cls(reason, token_fingerprint)
        return cls(reason)


@dataclass(frozen=True)
class Decision:
    refresh: bool
    reason: str


def decide(
    stored: StoredToken,
    request: RefreshRequest,
    *,
    now: float,
    margin_seconds: int,
    rejected_cooldown_seconds: int = 0,
) -> Decision:
    """Whether this run must call the IdP. Pure: the whole policy is here and unit-tested."""
    if request.reason == "forced":
        return Decision(True, "forced")
    if stored.token is None:
        return Decision(True, "missing" if stored.problem == "missing" else "unreadable")
    if request.reason == "rejected" and request.token_fingerprint == stored.fingerprint:
        if now - stored.token.issued_at < rejected_cooldown_seconds:
            # A token this young being rejected points at the API or the setup, not at the token: replacing
            # it again and again would only hammer the IdP. Consumers get AuthenticationError instead.
            return Decision(False, "rejected-within-cooldown")
        # Still the very token a consumer saw rejected; N consumers reporting it cause one IdP call,
        # because the first refresh replaces it and later reports no longer match.
        return Decision(True, "rejected")
    if stored.token.seconds_remaining(now) <= margin_seconds:
        return Decision(True, "expiring")
    if request.reason == "rejected":
        return Decision(False, "rejected-token-already-replaced")
    return Decision(False, "fresh")


@dataclass(frozen=True)
class RefreshOutcome:
    refreshed: bool
    reason: str
    expires_at: int
    seconds_remaining: float
    token_fingerprint: str
    idp_latency_ms: float | None = None
    idp_attempts: int = 0
    version_id: str | None = None

    def response(self) -> dict[str, Any]:
        """The Lambda's return value (DESIGN.md §4): never the token itself."""
        return {"refreshed": self.refreshed, "reason": self.reason, "expires_at": self.expires_at}


class RefreshFailedError(UsageEngineError):
    """The refresh did not happen; the stored token (if any) was left as it was."""

    def __init__(self, reason: str, cause: UsageEngineError, stored: StoredToken | None, now: float) -> None:
        super().__init__(f"token refresh ({reason}) failed, stored token left untouched: {cause}")
        self.reason = reason
        self.cause = cause
        self.stored_seconds_remaining = (
            stored.token.seconds_remaining(now) if stored is not None and stored.token else None
        )


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
        client = secrets_manager_client()
        return cls(
            store=TokenStore(SecretsManagerSecret(client, settings.token_secret_id)),
            credentials=CredentialsSource(SecretsManagerSecret(client, settings.credentials_secret_id)),
            exchange=_shared_exchange(),
            settings=settings,
            clock=clock,
        )

    def run(self, request: RefreshRequest) -> RefreshOutcome:
        stored: StoredToken | None = None
        reason = request.reason
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
            raise RefreshFailedError(reason, error, stored, self._clock()) from error
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


_exchange: ClientCredentialsExchange | None = None


def _shared_exchange() -> ClientCredentialsExchange:
    # One session per container: warm invocations reuse the TLS connection to the IdP.
    global _exchange
    if _exchange is None:
        _exchange = ClientCredentialsExchange()
    return _exchange
