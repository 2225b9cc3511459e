"""The OAuth 2.0 client-credentials exchange with the Usage Engine identity provider."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import requests
from urllib3.util.retry import Retry

from .clock import Clock, system_clock
from .credentials import ClientCredentials
from .errors import IdpRejectedError, IdpUnavailableError, TokenResponseError
from .retrying_http import attempts_of, bounded_retry, deadline_timeout, describe_failure, retrying_session
from .safe_text import is_code, json_field
from .token import BEARER_TOKEN_CHARS, AccessToken

CONNECT_TIMEOUT_SECONDS = 3.05
READ_TIMEOUT_SECONDS = 10.0
MAX_RETRIES = 3
RETRY_STATUSES = (429, 500, 502, 503, 504)
# A token response is a few hundred bytes; anything far larger is not a token and is not read into memory.
MAX_RESPONSE_BYTES = 64 * 1024
MAX_EXPIRES_IN_SECONDS = 24 * 3600


def token_request_retry(max_retries: int = MAX_RETRIES, backoff_factor: float = 0.5) -> Retry:
    """Retries on connection errors, timeouts, 429 and 5xx; POST is retried on purpose, since asking for
    another token has no side effect beyond the rate limit."""
    return bounded_retry(
        max_retries=max_retries, methods={"POST"}, statuses=RETRY_STATUSES, backoff_factor=backoff_factor
    )


def token_session(retry: Retry | None = None) -> requests.Session:
    return retrying_session(retry or token_request_retry(), pool_maxsize=1)


@dataclass(frozen=True)
class IssuedToken:
    token: AccessToken
    attempts: int
    latency_ms: float


class ClientCredentialsExchange:
    def __init__(
        self,
        session: requests.Session | None = None,
        *,
        clock: Clock = system_clock,
        timeout: tuple[float, float] = (CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
        max_attempts_hint: int = MAX_RETRIES + 1,
    ) -> None:
        self._session = session or token_session()
        self._clock = clock
        self._timeout = timeout
        self._max_attempts = max_attempts_hint

    def fetch(self, credentials: ClientCredentials, *, token_url: str, audience: str) -> IssuedToken:
        form = {
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret,
            "grant_type": "client_credentials",
            "audience": audience,
        }
        # expires_at counts from before the first attempt: never later than the IdP's own clock says.
        sent_at = self._clock()
        started = time.monotonic()
        try:
            response = self._session.post(
                token_url,
                data=form,
                headers={"Accept": "application/json"},
                # requests hands a urllib3 Timeout to urllib3 as it is (its stubs only know floats and tuples).
                timeout=deadline_timeout(*self._timeout, what="the token request"),  # type: ignore[arg-type]
                stream=True,
                allow_redirects=False,
            )
        except requests.exceptions.RequestException as error:
            raise IdpUnavailableError(describe_failure(error), attempts=self._max_attempts) from None
        try:
            attempts = attempts_of(response)
            body = _read_capped(response, attempts)
        finally:
            response.close()
        latency_ms = (time.monotonic() - started) * 1000
        if not 200 <= response.status_code < 300:
            reason = _error_code(body) or response.reason or "error"
            error_type = IdpUnavailableError if response.status_code in RETRY_STATUSES else IdpRejectedError
            raise error_type(reason, status=response.status_code, attempts=attempts)
        token = parse_token_response(body, sent_at=sent_at, audience=audience, status=response.status_code)
        return IssuedToken(token=token, attempts=attempts, latency_ms=latency_ms)


def parse_token_response(body: bytes, *, sent_at: float, audience: str, status: int = 200) -> AccessToken:
    """Validate the IdP's success body strictly; a bad token must never reach the token secret."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise TokenResponseError("body is not JSON", status=status) from None
    if not isinstance(data, dict):
        raise TokenResponseError("body is not a JSON object", status=status)
    value = data.get("access_token")
    if not isinstance(value, str) or not value:
        raise TokenResponseError("access_token is missing or empty", status=status)
    if not BEARER_TOKEN_CHARS.fullmatch(value):
        raise TokenResponseError("access_token has characters a bearer token cannot have", status=status)
    token_type = data.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenResponseError("token_type is not Bearer", status=status)
    expires_in = data.get("expires_in")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int):
        raise TokenResponseError("expires_in is missing or not an integer", status=status)
    if not 0 < expires_in <= MAX_EXPIRES_IN_SECONDS:
        raise TokenResponseError(
            f"expires_in must be between 1 and {MAX_EXPIRES_IN_SECONDS}, got {expires_in}", status=status
        )
    scope = data.get("scope", "")
    if not isinstance(scope, str):
        raise TokenResponseError("scope is not a string", status=status)
    issued_at = int(sent_at)
    return AccessToken(
        value=value,
        token_type="Bearer",
        issued_at=issued_at,
        expires_at=issued_at + expires_in,
        scope=scope,
        audience=audience,
    )


def _read_capped(response: requests.Response, attempts: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(chunk_size=8192):
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise TokenResponseError(
                    f"body exceeds {MAX_RESPONSE_BYTES} bytes", status=response.status_code, attempts=attempts
                )
            chunks.append(chunk)
    except requests.exceptions.RequestException as error:
        raise IdpUnavailableError(
            f"reading the body failed: {describe_failure(error)}", status=response.status_code, attempts=attempts
        ) from None
    return b"".join(chunks)


def _error_code(body: bytes) -> str | None:
    """The OAuth `error` code of an error body, only when it looks like a code (never echo free text)."""
    return json_field(body, ("error",), is_code)
