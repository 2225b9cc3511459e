"""UsageEngineClient: the bearer token attached, retries where safe, and self-healing authentication."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

import requests

from .clock import Clock, Sleep, system_clock, system_sleep
from .deadline import Deadline, current_deadline, deadline_scope
from .errors import AuthenticationError, TokenRejectedError, UsageEngineApiError, UsageEngineError
from .provider import TokenProvider
from .recovery import BUSY_ATTEMPTS, RefreshRequester, TokenRecovery
from .retrying_http import bounded_retry, deadline_timeout, describe_failure, retrying_session
from .safe_text import is_short_sentence, json_field
from .token import AccessToken

__all__ = ["BUSY_ATTEMPTS", "RefreshRequester", "UsageEngineClient", "api_session"]

CONNECT_TIMEOUT_SECONDS = 3.05
READ_TIMEOUT_SECONDS = 10.0
MAX_RETRIES = 3
# Only idempotent methods are retried by the transport; a failed POST is reported to the caller, whose
# redelivery (SQS) and duplicate handling (409) make it safe to send again.
RETRY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = (429, 502, 503, 504)

logger = logging.getLogger(__name__)


def api_session(pool_maxsize: int = 16) -> requests.Session:
    retry = bounded_retry(max_retries=MAX_RETRIES, methods=RETRY_METHODS, statuses=RETRY_STATUSES)
    return retrying_session(retry, pool_maxsize=pool_maxsize)


class UsageEngineClient:
    """One per container (see `from_env`): its session pools connections across warm invocations."""

    def __init__(
        self,
        base_url: str,
        tokens: TokenProvider,
        *,
        refresher: RefreshRequester | None = None,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
        sleep: Sleep = system_sleep,
        busy_attempts: int = BUSY_ATTEMPTS,
        clock: Clock = system_clock,
        recovery: TokenRecovery | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.recovery = recovery or TokenRecovery(
            tokens, refresher, sleep=sleep, clock=clock, busy_attempts=busy_attempts
        )
        self._session = session or api_session()
        self._timeout = timeout
        self._calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()

    @classmethod
    def from_env(cls, connection: str | None = None) -> UsageEngineClient:
        """The container's shared client of `connection` (None: the default connection, TOKEN_SECRET_ID, ...; a
        name such as "us", any case: USAGE_ENGINE_US_TOKEN_SECRET_ID, USAGE_ENGINE_US_API_URL, ...), from the
        environment read now, not at import. Each connection has its own client and hold-off."""
        from .composition import components  # deferred: the composition root builds this module's objects

        return components().client_from_env(connection)

    def request(self, method: str, path: str, *, deadline: Deadline | None = None, **kwargs: Any) -> requests.Response:
        """Send a request with the bearer token; return the 2xx response or raise a typed error.

        A 401 is healed once: drop that token, re-read the secret, ask the refresher if the secret still
        holds the rejected token, and resend. A second 401 raises AuthenticationError (no loop).

        Every wait (connect, read, backoff, Retry-After, recovery) ends by `deadline`, or by the current
        `deadline_scope` (the earlier of the two); DeadlineExceededError when no time is left to start.
        """
        method = method.upper()
        if not path.startswith("/") or path.startswith("//"):
            # An absolute URL here would send the bearer token to another host.
            raise ValueError("path must be relative to the API base URL and start with a single '/'")
        with deadline_scope(deadline or current_deadline()):
            return self._request(method, path, kwargs)

    def _request(self, method: str, path: str, kwargs: dict[str, Any]) -> requests.Response:
        token = self.recovery.usable_token()
        response = self._send(method, path, token, kwargs)
        if response.status_code == 401:
            response.close()
            response = self._resend_after_rejection(method, path, token, kwargs)
        if 200 <= response.status_code < 300:
            return response
        reason = _safe_reason(response)
        response.close()
        raise UsageEngineApiError(method, path, response.status_code, reason)

    def _resend_after_rejection(
        self, method: str, path: str, rejected: AccessToken, kwargs: dict[str, Any]
    ) -> requests.Response:
        """The one resend after a 401, with a replacement token; AuthenticationError if that is rejected too."""
        facts: dict[str, Any] = {"method": method, "path": path, "rejected_fingerprint": rejected.fingerprint}
        logger.info("Usage Engine API rejected the token; replacing it", extra=facts)
        try:
            token = self.recovery.replace_rejected(rejected)
        except UsageEngineError as error:
            logger.warning(
                "Rejected token not replaced", extra={**facts, "error_type": type(error).__name__, "error": str(error)}
            )
            if isinstance(error, TokenRejectedError):
                raise AuthenticationError(method, path, 401, str(error)) from None
            raise
        response = self._send(method, path, token, kwargs)
        facts.update(token_fingerprint=token.fingerprint, status=response.status_code)
        if response.status_code == 401:
            response.close()
            logger.warning("Usage Engine API rejected the replacement token too", extra=facts)
            raise AuthenticationError(method, path, 401, f"token {token.fingerprint}, fresh, was rejected too")
        logger.info("Resent with a replacement token", extra=facts)
        return response

    def get_json(self, path: str, *, deadline: Deadline | None = None, **kwargs: Any) -> Any:
        return _json(self.request("GET", path, deadline=deadline, **kwargs), path)

    def drain_call_counts(self) -> dict[str, int]:
        """Responses by status class ("2xx", "4xx", "5xx", "error") since the last drain, for metrics."""
        with self._calls_lock:
            counts = dict(self._calls)
            self._calls.clear()
        return counts

    def _send(self, method: str, path: str, token: AccessToken, kwargs: dict[str, Any]) -> requests.Response:
        # A copy: the same arguments are sent again after a 401.
        connect, read = self._timeout
        options = {"timeout": deadline_timeout(connect, read, what=f"{method} {path}"), **kwargs}
        headers = {"Accept": "application/json", **(options.pop("headers", None) or {})}
        headers["Authorization"] = token.authorization
        try:
            response = self._session.request(method, self.base_url + path, headers=headers, **options)
        except requests.exceptions.RequestException as error:
            self._count(None)
            raise UsageEngineApiError(method, path, None, describe_failure(error)) from None
        self._count(response.status_code)
        return response

    def _count(self, status: int | None) -> None:
        with self._calls_lock:
            self._calls[f"{status // 100}xx" if status else "error"] += 1


def _safe_reason(response: requests.Response) -> str:
    """A short reason from an error body, only if it looks like a code or a plain sentence."""
    try:
        body = response.json()
    except (ValueError, RecursionError):
        return response.reason or "error"
    return json_field(body, ("error", "message", "errorMessage"), is_short_sentence) or response.reason or "error"


def _json(response: requests.Response, path: str) -> Any:
    try:
        return response.json()
    except (ValueError, RecursionError):
        raise UsageEngineApiError("GET", path, response.status_code, "the answer is not JSON") from None
