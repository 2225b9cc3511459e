"""The token secret as a store of AccessToken values."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SECRET_BINARY_NOT_SUPPORTED, SecretStoreError, TokenFormatError
from .secrets_manager import SecretsManagerSecret
from .states import TokenProblem
from .token import AccessToken, decode_token, encode_token


@dataclass(frozen=True)
class StoredToken:
    """What the token secret holds: a token, or the problem that there is none (never both)."""

    token: AccessToken | None
    problem: TokenProblem | None = None
    # What exactly is unreadable (a field name, "binary value"), never a value from the secret.
    detail: str | None = None

    @property
    def fingerprint(self) -> str | None:
        return self.token.fingerprint if self.token else None

    def describe(self) -> str:
        """e.g. "missing", "unreadable (token secret: expires_at: must be positive)"."""
        if self.token is not None:
            return f"token {self.token.fingerprint}"
        problem = str(self.problem or TokenProblem.UNREADABLE)
        return f"{problem} ({self.detail})" if self.detail else problem


class TokenStore:
    def __init__(self, secret: SecretsManagerSecret) -> None:
        self._secret = secret

    @property
    def secret_id(self) -> str:
        return self._secret.secret_id

    def load(self) -> StoredToken:
        """Read the current token. A malformed secret is reported, not raised: it is repaired by a refresh."""
        try:
            raw = self._secret.read()
        except SecretStoreError as error:
            if error.code != SECRET_BINARY_NOT_SUPPORTED:
                raise
            # Edited by hand into a binary value: as unreadable as malformed JSON, and repaired the same way.
            return StoredToken(None, TokenProblem.UNREADABLE, "a binary value, not a JSON string")
        if raw is None:
            return StoredToken(None, TokenProblem.MISSING)
        try:
            return StoredToken(decode_token(raw))
        except TokenFormatError as error:
            return StoredToken(None, TokenProblem.UNREADABLE, str(error))

    def save(self, token: AccessToken) -> str:
        return self._secret.write(encode_token(token))
