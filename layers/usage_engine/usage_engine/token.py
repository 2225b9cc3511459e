"""The access token, its fingerprint, and the JSON codec of the token secret (docs/contracts.md)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from .errors import TokenFormatError
from .states import DecisionReason

FINGERPRINT_LENGTH = 16
# RFC 6750 b64token: anything else could not travel in an Authorization header. Always fullmatch: `$` would
# accept a trailing newline.
BEARER_TOKEN_CHARS = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# A Secrets Manager VersionId is a UUID; anything else in the field is not one and is not carried (or logged).
_VERSION_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# A streak this long already waits for the cap; a larger number (a hand-edited secret) changes nothing.
MAX_REJECTION_STREAK = 64


def fingerprint(token_value: str) -> str:
    """The way to talk about a token in logs and requests: the first 16 hex digits of its sha256."""
    return hashlib.sha256(token_value.encode("utf-8")).hexdigest()[:FINGERPRINT_LENGTH]


@dataclass(frozen=True)
class RefreshRecord:
    """The refresher's notes on how the stored token came to be, kept as optional extra fields of the token
    secret (docs/contracts.md) so that they outlive the refresher's container. Consumers never need them; a
    missing or malformed note reads as "no note" and never makes the token unreadable."""

    minted_for: DecisionReason | None = None
    # How many tokens in a row were minted in answer to rejections (0: none, or a normal refresh reset it).
    rejection_streak: int = 0
    # The credentials secret's VersionId the token was minted with.
    credentials_version: str | None = None
    # When the last forced refresh ran (epoch seconds): carried over later refreshes while it still limits the
    # next forced one.
    forced_at: int | None = None

    def fields(self) -> dict[str, Any]:
        """The extra fields of the token secret, only those that say something."""
        extra: dict[str, Any] = {}
        if self.minted_for is not None:
            extra["minted_for"] = str(self.minted_for)
        if self.rejection_streak > 0:
            extra["rejection_streak"] = self.rejection_streak
        if self.credentials_version is not None:
            extra["credentials_version"] = self.credentials_version
        if self.forced_at is not None:
            extra["forced_at"] = self.forced_at
        return extra

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> RefreshRecord:
        reason = data.get("minted_for")
        streak = data.get("rejection_streak")
        version = data.get("credentials_version")
        forced_at = data.get("forced_at")
        return cls(
            minted_for=DecisionReason(reason) if isinstance(reason, str) and reason in _REASON_VALUES else None,
            rejection_streak=min(streak, MAX_REJECTION_STREAK) if _positive_int(streak) else 0,
            credentials_version=version if isinstance(version, str) and _VERSION_ID.fullmatch(version) else None,
            forced_at=forced_at if _positive_int(forced_at) else None,
        )


_REASON_VALUES = frozenset(str(reason) for reason in DecisionReason)
NO_RECORD = RefreshRecord()


def _positive_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class AccessToken:
    # repr=False keeps the token out of reprs, tracebacks with locals, and f-strings of the object.
    value: str = field(repr=False)
    expires_at: int
    issued_at: int
    token_type: str = "Bearer"
    scope: str = ""
    audience: str = ""
    # Not part of the token's identity: the same token with other notes is the same token.
    record: RefreshRecord = field(default=NO_RECORD, compare=False, repr=False)

    @property
    def authorization(self) -> str:
        return f"Bearer {self.value}"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.value)

    def seconds_remaining(self, now: float) -> float:
        return self.expires_at - now

    def is_usable(self, now: float, *, skew_seconds: float = 0) -> bool:
        return now < self.expires_at - skew_seconds

    def __repr__(self) -> str:
        return f"AccessToken(fingerprint={self.fingerprint}, expires_at={self.expires_at})"

    __str__ = __repr__


def encode_token(token: AccessToken) -> str:
    return json.dumps(
        {
            "access_token": token.value,
            "token_type": token.token_type,
            "expires_at": token.expires_at,
            "issued_at": token.issued_at,
            "scope": token.scope,
            "audience": token.audience,
            **token.record.fields(),
        },
        separators=(",", ":"),
    )


def decode_token(secret_string: str) -> AccessToken:
    """Parse the token secret; wrong or missing token fields raise TokenFormatError. The refresher's notes
    (`RefreshRecord`) are read leniently and every other field is ignored."""
    try:
        data = json.loads(secret_string)
    except (ValueError, TypeError, RecursionError):
        raise TokenFormatError("(document)", "is not valid JSON") from None
    if not isinstance(data, dict):
        raise TokenFormatError("(document)", "is not a JSON object")
    value = _string(data, "access_token", required=True)
    if not BEARER_TOKEN_CHARS.fullmatch(value):
        raise TokenFormatError("access_token", "has characters a bearer token cannot have")
    token_type = _string(data, "token_type", required=True)
    if token_type.lower() != "bearer":
        raise TokenFormatError("token_type", "must be Bearer")
    return AccessToken(
        value=value,
        token_type="Bearer",
        expires_at=_epoch(data, "expires_at"),
        issued_at=_epoch(data, "issued_at"),
        scope=_string(data, "scope", required=False),
        audience=_string(data, "audience", required=False),
        record=RefreshRecord.from_fields(data),
    )


def _string(data: dict[str, Any], key: str, *, required: bool) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise TokenFormatError(key, "must be a string")
    if required and not value.strip():
        raise TokenFormatError(key, "must not be empty")
    return value


def _epoch(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    # bool is an int subclass; `true` is never a timestamp.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TokenFormatError(key, "must be an integer number of epoch seconds")
    if value <= 0:
        raise TokenFormatError(key, "must be positive")
    return value
