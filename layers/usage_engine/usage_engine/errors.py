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


# The SecretStoreError code for a secret that holds SecretBinary (this layer reads JSON strings only).
SECRET_BINARY_NOT_SUPPORTED = "SecretBinaryNotSupported"


class SecretStoreError(UsageEngineError):
    """Secrets Manager refused or failed a call (after the SDK's own retries)."""

    # Throttling and connection trouble pass by themselves; AccessDenied, a KMS failure or a binary value
    # need an operator.
    TRANSIENT_CODES = frozenset(
        {
            "ThrottlingException",
            "TooManyRequestsException",
            "InternalServiceError",
            "InternalFailure",
            "ServiceUnavailable",
            "RequestTimeout",
            "RequestTimeoutException",
            "EndpointConnectionError",
            "ConnectTimeoutError",
            "ConnectionClosedError",
            "ReadTimeoutError",
        }
    )

    def __init__(self, operation: str, secret_id: str, code: str) -> None:
        super().__init__(f"Secrets Manager {operation} on {secret_id} failed: {code}")
        self.operation = operation
        self.secret_id = secret_id
        self.code = code

    @property
    def transient(self) -> bool:
        """Whether the same call may succeed on its own a little later (retry), or needs an operator."""
        return self.code in self.TRANSIENT_CODES


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


class CredentialsRejectedError(IdpRejectedError):
    """The IdP rejected these credentials before: no request is made until the credentials secret changes or an
    operator forces a refresh; scheduled runs retry with backoff."""

    def __init__(
        self,
        *,
        credentials_version: str | None,
        count: int,
        status: int | None,
        reason: str,
        seconds_ago: float,
        retry_in: float | None,
    ) -> None:
        when = "on-demand runs do not retry" if retry_in is None else f"next scheduled retry in {int(retry_in)} s"
        where = f"HTTP {status}" if status is not None else "no HTTP status"
        UsageEngineError.__init__(
            self,
            f"the IdP rejected credentials version {credentials_version or '(unknown)'} {count} time(s) in a row "
            f"({where}): {reason}, last {int(seconds_ago)} s ago; not asked again until the credentials secret "
            f"changes or a forced refresh ({when})",
        )
        self.reason = reason
        self.status = status
        self.attempts = 0
        self.credentials_version = credentials_version
        self.count = count


class TokenResponseError(IdpError):
    """The IdP answered 2xx but the body is not a usable token (garbage, wrong type, bad expires_in)."""


class RefreshRequestError(UsageEngineError):
    """The refresher was invoked with an event it does not understand."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"refresh request: {problem}")


class TokenUnavailableError(UsageEngineError):
    """No valid access token could be obtained for a consumer."""


class DeadlineExceededError(UsageEngineError):
    """The invocation's remaining time ran out before the operation could finish (or start): transient, the
    same call succeeds with more time (SQS redelivers the record; an HTTP caller gets a 504)."""

    retryable = True

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}: the invocation's deadline left no time for it")
        self.what = what


class TokenRejectedError(UsageEngineError):
    """The API rejected the token and recovery could not get a different one (the client reports it as an
    AuthenticationError for the request that was rejected)."""


class UsageEngineApiError(UsageEngineError):
    """The Usage Engine API answered with an error status, or could not be reached (status None)."""

    # 429 and server-side trouble pass; the request itself may be fine. Others need a changed request.
    RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

    def __init__(self, method: str, path: str, status: int | None, reason: str) -> None:
        where = f"HTTP {status}" if status is not None else "no HTTP response"
        super().__init__(f"Usage Engine API {method} {path} failed ({where}): {reason}")
        self.method = method
        self.path = path
        self.status = status
        self.reason = reason

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status in self.RETRYABLE_STATUSES


class AuthenticationError(UsageEngineApiError):
    """The API rejected a token that was fresh from the refresher: no loop, an operator must look."""

    @property
    def retryable(self) -> bool:
        # Not the request's fault: after credentials are fixed the same request succeeds.
        return True


class RefreshHoldOffError(TokenUnavailableError):
    """This container asked the refresher moments ago and got no token: it does not ask again (nor read the
    secret) until `retry_after_seconds` have passed. Transient."""

    def __init__(self, message: str, *, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class RefreshUnavailableError(TokenUnavailableError):
    """The on-demand refresh could not be requested (refresher failing, not deployed, or not allowed)."""


class RefreshFailedError(UsageEngineError):
    """The refresh did not happen; the stored token (if any) was left as it was."""

    def __init__(self, reason: str, cause: UsageEngineError, stored_seconds_remaining: float | None) -> None:
        super().__init__(f"token refresh ({reason}) failed, stored token left untouched: {cause}")
        self.reason = reason
        self.cause = cause
        self.stored_seconds_remaining = stored_seconds_remaining


class DeadLetterError(UsageEngineError):
    """The dead-letter queue could not take the message: it must be retried, never dropped."""


class MalformedMessageError(UsageEngineError):
    """The message can never be applied as it is: it goes to the dead-letter queue with this reason."""


class RetryableMessageError(UsageEngineError):
    """The message is fine but could not be applied now (429, 5xx, timeout, no token): SQS redelivers it."""


class InvalidIdentifierError(UsageEngineError, ValueError):
    """An identifier that must not reach a request; `field` names it (e.g. "meterId"), never its value."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem
