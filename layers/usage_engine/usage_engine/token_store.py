"""The token secret as a store of AccessToken values."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import TokenFormatError
from .secrets_manager import SecretsManagerSecret
from .token import AccessToken, decode_token, encode_token


@dataclass(frozen=True)
class StoredToken:
    """What the token secret holds: a token, or the reason there is none (never both)."""

    token: AccessToken | None
    problem: str | None = None

    @property
    def fingerprint(self) -> str | None:
        return self.token.fingerprint if self.token else None


class TokenStore:
    def __init__(self, secret: SecretsManagerSecret) -> None:
        self._secret = secret

    @property
    def secret_id(self) -> str:
        return self._secret.secret_id

    def load(self) -> StoredToken:
        """Read the current token. A malformed secret is reported, not raised: it is repaired by a refresh."""
        raw = self._secret.read()
        if raw is None:
            return StoredToken(None, "missing")
        try:
            return StoredToken(decode_token(raw))
        except TokenFormatError as error:
            return StoredToken(None, f"unreadable ({error})")

    def save(self, token: AccessToken) -> str:
        return self._secret.write(encode_token(token))
