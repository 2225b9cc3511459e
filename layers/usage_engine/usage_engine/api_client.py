"""UsageEngineClient: the bearer token attached, retries where safe, and self-healing authentication."""

from __future__ import annotations

import math
import random
import threading
from collections import Counter
from typing import Any, Protocol

import requests

from .aws_clients import lambda_client
from .clock import Clock, Sleep, system_clock, system_sleep
from .container import PerContainer
from .errors import AuthenticationError, RefreshUnavailableError, TokenUnavailableError, UsageEngineApiError
from .provider import TokenProvider, shared_provider
from .refresh_requester import LambdaRefreshRequester, RefreshResult
from .retrying_http import bounded_retry, describe_failure, retrying_session
from .settings import ConsumerSettings
from .token import AccessToken

CONNECT_TIMEOUT_SECONDS = 3.05
READ_TIMEOUT_SECONDS = 10.0
MAX_RETRIES = 3
# Only idempotent methods are retried by the transport; a failed POST is reported to the caller, whose
# redelivery (SQS) and duplicate handling (409) make it safe to send again.
RETRY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = (429, 502, 503, 504)
# When the refresher is busy (reserved concurrency 1), wait with jitter and re-read the secret.
BUSY_ATTEMPTS = 6
BUSY_BASE_DELAY_SECONDS = 0.25
# After an on-demand refresh ended without a usable token, this container does not ask the refresher again for
# a jittered 50-100% of this: its invocations still read the secret (and so pick up a token the schedule or
# another container stored) but fail fast. Without it, during an IdP outage longer than a token's lifetime every
# invocation runs the whole busy loop (up to 6 GetSecretValue and 12 Invoke calls): at fleet scale that nears
# the account's GetSecretValue quota (benchmarks/RESULTS.md, section 6).
REFRESH_HOLD_OFF_SECONDS = 30.0
# After a 401, wait a random 0..this before re-reading the secret. A revocation reaches every container holding
# the token within the same moment: spread out, most re-reads come after the first refresh has stored a new
# token, so they need no refresher call (10,000 containers: 1.5 -> 1.1 reads each, slowest recovery 2.9 -> 1.5 s).
REJECTED_REREAD_JITTER_SECONDS = 0.5
_SAFE_REASON_LENGTH = 120


class RefreshRequester(Protocol):
    def request(self, reason: str, token_fingerprint: str | None = None) -> RefreshResult: ...


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
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self._refresher = refresher
        self._session = session or api_session()
        self._timeout = timeout
        self._sleep = sleep
        self._busy_attempts = busy_attempts
        self._clock = clock
        self._hold_off_until = -math.inf
        self._calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()

    @classmethod
    def from_env(cls) -> UsageEngineClient:
        return shared_client(ConsumerSettings.from_env())

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send a request with the bearer token; return the 2xx response or raise a typed error.

        A 401 is healed once: drop that token, re-read the secret, ask the refresher if the secret still
        holds the rejected token, and resend. A second 401 raises AuthenticationError (no loop).
        """
        method = method.upper()
        if not path.startswith("/") or path.startswith("//"):
            # An absolute URL here would send the bearer token to another host.
            raise ValueError("path must be relative to the API base URL and start with a single '/'")
        token = self._usable_token()
        response = self._send(method, path, token, kwargs)
        if response.status_code == 401:
            response.close()
            token = self._replace_rejected(method, path, token)
            response = self._send(method, path, token, kwargs)
            if response.status_code == 401:
                response.close()
                raise AuthenticationError(method, path, 401, f"token {token.fingerprint}, fresh, was rejected too")
        if 200 <= response.status_code < 300:
            return response
        reason = _safe_reason(response)
        response.close()
        raise UsageEngineApiError(method, path, response.status_code, reason)

    def get_json(self, path: str, **kwargs: Any) -> Any:
        return _json(self.request("GET", path, **kwargs), path)

    def drain_call_counts(self) -> dict[str, int]:
        """Responses by status class ("2xx", "4xx", "5xx", "error") since the last drain, for metrics."""
        with self._calls_lock:
            counts = dict(self._calls)
            self._calls.clear()
        return counts

    def _send(self, method: str, path: str, token: AccessToken, kwargs: dict[str, Any]) -> requests.Response:
        # A copy: the same arguments are sent again after a 401.
        options = {"timeout": self._timeout, **kwargs}
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

    def _usable_token(self) -> AccessToken:
        try:
            return self.tokens.get()
        except TokenUnavailableError:
            if self._refresher is None:
                raise
        return self._refresh_and_read("expired", None)

    def _replace_rejected(self, method: str, path: str, rejected: AccessToken) -> AccessToken:
        self.tokens.invalidate(rejected)
        self._sleep(random.uniform(0, REJECTED_REREAD_JITTER_SECONDS))  # noqa: S311  # nosec B311 - jitter
        try:
            current = self.tokens.get()
            if current.value != rejected.value:
                # Another container already had it replaced: no refresher call needed.
                return current
        except TokenUnavailableError:
            pass
        if self._refresher is None:
            raise AuthenticationError(
                method, path, 401, "token rejected and on-demand refresh is off (TOKEN_REFRESHER_FUNCTION)"
            )
        token = self._refresh_and_read("rejected", rejected)
        if token.value == rejected.value:
            raise AuthenticationError(method, path, 401, "the refresher kept the rejected token (cooldown)")
        return token

    def _refresh_and_read(self, reason: str, rejected: AccessToken | None) -> AccessToken:
        """Ask the refresher, then read the secret; while it is busy, back off with full jitter and re-read.

        When that ends without a token, the next calls within the hold-off fail fast instead of asking again.
        """
        refresher = self._refresher
        if refresher is None:
            raise TokenUnavailableError("no valid token and on-demand refresh is off (TOKEN_REFRESHER_FUNCTION)")
        if self._clock() < self._hold_off_until:
            raise TokenUnavailableError(f"no valid token; an on-demand refresh ({reason}) failed moments ago")
        try:
            return self._ask_refresher_and_read(refresher, reason, rejected)
        except (TokenUnavailableError, RefreshUnavailableError):
            jitter = random.uniform(0.5, 1.0)  # noqa: S311  # nosec B311 - jitter, not cryptography
            self._hold_off_until = self._clock() + jitter * REFRESH_HOLD_OFF_SECONDS
            raise

    def _ask_refresher_and_read(
        self, refresher: RefreshRequester, reason: str, rejected: AccessToken | None
    ) -> AccessToken:
        fingerprint = rejected.fingerprint if rejected is not None else None
        last_problem = "the refresher did not produce a token"
        for attempt in range(self._busy_attempts):
            result = refresher.request(reason, fingerprint)
            if rejected is not None:
                self.tokens.invalidate(rejected)
            try:
                token = self.tokens.get()
            except TokenUnavailableError as error:
                last_problem = str(error)
            else:
                if rejected is None or token.value != rejected.value or result != "busy":
                    return token
            if result != "busy":
                break
            self._sleep(random.uniform(0, BUSY_BASE_DELAY_SECONDS * 2**attempt))  # noqa: S311  # nosec B311 - jitter, not cryptography
        raise TokenUnavailableError(f"no valid token after asking the refresher ({reason}): {last_problem}")


def _safe_reason(response: requests.Response) -> str:
    """A short reason from an error body, only if it looks like a code or a plain sentence."""
    try:
        body = response.json()
    except (ValueError, RecursionError):
        body = None
    if isinstance(body, dict):
        for key in ("error", "message", "errorMessage"):
            value = body.get(key)
            if isinstance(value, str) and 0 < len(value) <= _SAFE_REASON_LENGTH and value.isprintable():
                return value
    return response.reason or "error"


def _json(response: requests.Response, path: str) -> Any:
    try:
        return response.json()
    except (ValueError, RecursionError):
        raise UsageEngineApiError("GET", path, response.status_code, "the answer is not JSON") from None


def _new_client(settings: ConsumerSettings) -> UsageEngineClient:
    refresher = (
        LambdaRefreshRequester(lambda_client(), settings.refresher_function) if settings.refresher_function else None
    )
    return UsageEngineClient(settings.api_url, shared_provider(settings), refresher=refresher)


# One client per settings per container (its session pools connections), sharing the container's provider.
clients: PerContainer[ConsumerSettings, UsageEngineClient] = PerContainer(_new_client)


def shared_client(settings: ConsumerSettings) -> UsageEngineClient:
    return clients.get(settings)
