"""HTTP at the boundary: what `requests` + urllib3 do with a response or an error, driven by the session's
real `Retry` object (`is_retry`, `increment`, `get_backoff_time`, `get_retry_after`)."""

from __future__ import annotations

import http
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError
from urllib3.response import HTTPResponse
from urllib3.util.retry import Retry
from urllib3.util.timeout import Timeout

from local.simulation.engine import Simulation


@dataclass(frozen=True)
class HttpAnswer:
    """What one HTTP attempt got: a response, or a connection `error` ("connect-timeout" or "refused")."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


class _Raw:
    """The bits of urllib3's response that the layer reads (`retries` for the attempt count)."""

    __slots__ = ("retries",)

    def __init__(self, retries: Retry) -> None:
        self.retries = retries


class Transport:
    def handle(
        self, method: str, url: str, headers: Mapping[str, str], data: Any, timeout: tuple[float, float]
    ) -> HttpAnswer:
        raise NotImplementedError


class FakeHttpSession:
    """A `requests.Session` whose network is a simulated `Transport`, retried by the session's real `Retry`."""

    def __init__(self, sim: Simulation, transport: Transport, retry: Retry, *, sync_before_send: bool) -> None:
        self._sim = sim
        self._transport = transport
        self._retry = retry
        self._sync = sync_before_send
        self.last_authorization: str | None = None
        self._ok_cache: dict[bytes, requests.Response] = {}

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", url, **kwargs)

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: Any = None,
        timeout: tuple[float, float] | Timeout = (3.05, 10.0),
        **_: Any,
    ) -> requests.Response:
        if isinstance(timeout, Timeout):
            # The layer passes a deadline-bound urllib3 Timeout; each attempt gets its clone, as in urllib3.
            attempt = timeout.clone()
            connect, read = attempt.connect_timeout, attempt.read_timeout
            timeout = (
                float(connect) if isinstance(connect, int | float) else 3.05,
                float(read) if isinstance(read, int | float) else 10.0,
            )
        sim = self._sim
        headers = headers or {}
        self.last_authorization = headers.get("Authorization")
        retry = self._retry
        while True:
            if self._sync:
                sim.sync()
            answer = self._transport.handle(method, url, headers, data, timeout)
            sim.elapse(answer.seconds)
            if answer.error is not None:
                retry = self._after_error(retry, method, url, answer.error)
                sim.elapse(retry.get_backoff_time())
                continue
            if answer.status >= 300 and retry.is_retry(method, answer.status, "Retry-After" in answer.headers):
                raw = HTTPResponse(body=answer.body, headers=dict(answer.headers), status=answer.status)
                try:
                    retry = retry.increment(method, url, response=raw)
                except MaxRetryError:
                    return self._response(answer, retry, url)
                retry_after = retry.get_retry_after(raw) if retry.respect_retry_after_header else None
                sim.elapse(retry_after if retry_after is not None else retry.get_backoff_time())
                continue
            return self._response(answer, retry, url)

    @staticmethod
    def _after_error(retry: Retry, method: str, url: str, kind: str) -> Retry:
        """urllib3's bookkeeping for a failed connection attempt, and requests' exception when it gives up."""
        error: Exception
        if kind == "connect-timeout":
            error = ConnectTimeoutError(None, f"Connection to {url} timed out")
        else:
            error = NewConnectionError(cast(Any, None), "Failed to establish a new connection: [Errno 111]")
        try:
            return retry.increment(method, url, error=error)
        except MaxRetryError as exhausted:
            reason = exhausted.reason
            if isinstance(reason, ConnectTimeoutError) and not isinstance(reason, NewConnectionError):
                raise requests.exceptions.ConnectTimeout(exhausted) from None
            raise requests.exceptions.ConnectionError(exhausted) from None

    def _response(self, answer: HttpAnswer, retry: Retry, url: str) -> requests.Response:
        if answer.status == 200 and not retry.history:
            # Warm-path answers are identical: build each distinct one once.
            cached = self._ok_cache.get(answer.body)
            if cached is not None:
                return cached
        response = requests.Response()
        response.status_code = answer.status
        response._content = answer.body
        response._content_consumed = True  # type: ignore[attr-defined]  # set by requests, not in its stubs
        response.headers = CaseInsensitiveDict(answer.headers)
        response.reason = http.HTTPStatus(answer.status).phrase
        response.url = url
        response.encoding = "utf-8"
        response.raw = _Raw(retry)
        if answer.status == 200 and not retry.history:
            self._ok_cache[answer.body] = response
        return response


def session_retry(session: requests.Session) -> Retry:
    """The Retry a layer session really mounts (so the simulation retries exactly as the layer does)."""
    retry = cast(HTTPAdapter, session.get_adapter("https://")).max_retries
    session.close()
    return retry
