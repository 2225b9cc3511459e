"""The access token, its fingerprint, and the JSON codec of the token secret (docs/contracts.md)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import TokenFormatError

FINGERPRINT_LENGTH = 16
# RFC 6750 b64token: anything else could not travel in an Authorization header. Always fullmatch: `$` would
# accept a trailing newline.
BEARER_TOKEN_CHARS = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def fingerprint(token_value: str) -> str:
    """The way to talk about a token in logs and requests: the first 16 hex digits of its sha256."""
    return hashlib.sha256(token_value.encode("utf-8")).hexdigest()[:FINGERPRINT_LENGTH]


@dataclass(frozen=True)
class AccessToken:
    # repr=False keeps the token out of reprs, tracebacks with locals, and f-strings of the object.
    value: str = field(repr=False)
    expires_at: int
    issued_at: int
    token_type: str = "Bearer"
    scope: str = ""
    audience: str = ""

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
        },
        separators=(",", ":"),
    )


def decode_token(secret_string: str) -> AccessToken:
    """Parse the token secret; extra fields are ignored, wrong or missing ones raise TokenFormatError."""
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
