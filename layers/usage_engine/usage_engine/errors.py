"""Typed errors of the layer.

Every message is safe to log: it may name a field, a status or a token fingerprint, never a secret value.
"""

from __future__ import annotations


class UsageEngineError(Exception):
    """Base class of every error this layer raises on purpose."""


class ConfigurationError(UsageEngineError):
    """An environment variable is missing or invalid."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"environment variable {variable}: {problem}")
        self.variable = variable


class CredentialsError(UsageEngineError):
    """The credentials secret is missing a field or is malformed."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"credentials secret: {field}: {problem}")
        self.field = field


class TokenFormatError(UsageEngineError):
    """The token secret does not hold a token in the documented format."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"token secret: {field}: {problem}")
        self.field = field


class SecretStoreError(UsageEngineError):
    """Secrets Manager refused or failed a call (after the SDK's own retries)."""

    def __init__(self, operation: str, secret_id: str, code: str) -> None:
        super().__init__(f"Secrets Manager {operation} on {secret_id} failed: {code}")
        self.operation = operation
        self.secret_id = secret_id
        self.code = code


class IdpError(UsageEngineError):
    """The identity provider did not hand out a usable token."""

    def __init__(self, reason: str, *, status: int | None = None, attempts: int = 1) -> None:
        where = f"HTTP {status}" if status is not None else "no HTTP response"
        super().__init__(f"token request failed after {attempts} attempt(s) ({where}): {reason}")
        self.reason = reason
        self.status = status
        self.attempts = attempts


class IdpUnavailableError(IdpError):
    """Transient: connection failures, timeouts, 429 and 5xx outlived the retry budget."""


class IdpRejectedError(IdpError):
    """Permanent until someone acts: the IdP answered a 4xx other than 429 (bad credentials, audience...)."""


class TokenResponseError(IdpError):
    """The IdP answered 2xx but the body is not a usable token (garbage, wrong type, bad expires_in)."""


class RefreshRequestError(UsageEngineError):
    """The refresher was invoked with an event it does not understand."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"refresh request: {problem}")


class TokenUnavailableError(UsageEngineError):
    """No valid access token could be obtained for a consumer."""
