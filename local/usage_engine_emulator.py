"""Local emulator of DigitalRoute's Usage Engine Cloud Edition API, for tests, the demo and benchmarks.

It is a real HTTP/1.1 server on 127.0.0.1 (a free port), so client code runs its real network path:
connection reuse, timeouts, retries, status handling. It emulates:

* the OAuth 2.0 client-credentials token endpoint (``POST /authentication/v1/oauth/token``), issuing
  RS256 JWTs shaped like the vendor's (Auth0-style claims), with the vendor's documented per-client rate
  limits: 10 requests/s with a burst of 5, and 1,000 requests per 5 minutes;
* the Bearer-protected Usage Metering API: meters (list/create/get/update/delete) and meter types.

Behaviours that are assumptions, not documented vendor behaviour:

* creating a meter whose (domain, externalRef) already exists answers 409 with the existing id;
* a token request for an audience other than the emulator's answers 403 "Service not found: <audience>";
* the meter-types path (``METER_TYPES_PATH``) is a guess;
* an unknown or malformed Bearer token always answers 401 ``invalid_token`` (even when the header is absent);
* validation error bodies (``{"error": "..."}``) are illustrative, not the vendor's exact wording.

Fault knobs (failures, garbage, delays, holds, revocation) let tests drive the client through the bad days.
Time is injectable: `clock` for token lifetimes and the rate limit (or `rate_limit_clock` for the limit
alone: a `ManualClock` freezes it), `sleep` for injected delays. `reset()` starts a new generation: a
request records the generation it arrived in, and a request still in flight from before a reset (its
client timed out, the test moved on) neither consumes the new generation's faults nor counts towards its
counters nor changes its meters or tokens; it is answered 503 ``emulator_reset``.
All mutable state sits behind one lock; nothing happens at import time.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from local.usage_engine_faults import Counters, FaultKnobs, Faults, RequestHold, claim_hold
from local.usage_engine_http import MAX_BODY_BYTES, MAX_DRAIN_BYTES, EmulatorServer, Request, parse_form
from local.usage_engine_state import (
    DEFAULT_SCOPE,
    ISSUER,
    RATE_BURST,
    RATE_PER_SECOND,
    RATE_WINDOW_LIMIT,
    RATE_WINDOW_SECONDS,
    ApiError,
    ManualClock,
    MeterStore,
    RateLimiter,
    Response,
    TokenIssuer,
    json_response,
    oauth_error,
    parse_json,
)

__all__ = [
    "DEFAULT_SCOPE",
    "ISSUER",
    "MAX_BODY_BYTES",
    "MAX_DRAIN_BYTES",
    "METERS_PATH",
    "METER_TYPES_PATH",
    "RATE_BURST",
    "RATE_PER_SECOND",
    "RATE_WINDOW_LIMIT",
    "RATE_WINDOW_SECONDS",
    "TOKEN_PATH",
    "ManualClock",
    "RequestHold",
    "UsageEngineEmulator",
]

TOKEN_PATH = "/authentication/v1/oauth/token"
METERS_PATH = "/api/usage-metering/v1/meters"
# The vendor does not document where meter types live; this is the one place that guess is made.
METER_TYPES_PATH = "/api/usage-metering/v1/meter-types"
_LIST_FILTERS = ("userId", "externalRef", "domain")
# The fleet simulation (local/simulation) runs the same limiter on its own clock under this name.
_RateLimiter = RateLimiter
_STALE = json_response(503, {"error": "emulator_reset"})


@dataclass(frozen=True)
class _Issued:
    token: str
    payload: dict[str, Any]
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None


class _StaleRequestError(Exception):
    """The request arrived before the last reset(): it must leave the new generation's state alone."""


class UsageEngineEmulator(FaultKnobs):
    """The emulated service. Use as a context manager, or ``start()``/``stop()``."""

    def __init__(
        self,
        *,
        clients: Mapping[str, str] | None = None,
        audience: str | None = None,
        expires_in: int = 3600,
        rate_limit: bool = True,
        clock: Callable[[], float] = time.time,
        rate_limit_clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_token_issued: Callable[[str], None] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._clients = dict(clients or {})
        self._audience = audience
        self._initial_expires_in = expires_in
        self._expires_in = expires_in
        self._clock = clock
        self._sleep = sleep
        self._on_token_issued = on_token_issued
        self._issuer = TokenIssuer(clock)
        self._limiter = RateLimiter(rate_limit_clock or clock) if rate_limit else None
        self._store = MeterStore(clock)
        self._faults = Faults()
        self._counters = Counters()
        self._generation = 0
        self._holds: list[RequestHold] = []
        self._server: EmulatorServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> UsageEngineEmulator:
        if self._server is not None:
            raise RuntimeError("emulator already started; create a new one to serve again")
        self._server = EmulatorServer(self._dispatch)
        self._thread = self._server.serve_in_background("usage-engine-emulator")
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None or not thread.is_alive():
            return
        with self._lock:
            holds = list(self._holds)
        for hold in holds:
            hold.release()
        server.shutdown()
        # Keep-alive connections would otherwise keep being served by their handler threads.
        server.close_connections()
        server.server_close()
        thread.join(timeout=5)

    def __enter__(self) -> UsageEngineEmulator:
        return self if self._server is not None else self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- addresses and keys ----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def token_url(self) -> str:
        return self.base_url + TOKEN_PATH

    @property
    def audience(self) -> str:
        return self._audience if self._audience is not None else f"{self.base_url}/"

    @property
    def public_key_pem(self) -> bytes:
        return self._issuer.public_key_pem

    @property
    def kid(self) -> str:
        return self._issuer.kid

    def add_client(self, client_id: str, client_secret: str) -> None:
        with self._lock:
            self._clients[client_id] = client_secret

    # -- knobs the fault mixin does not cover ----------------------------------------------------------

    def revoke_all_tokens(self) -> None:
        with self._lock:
            self._issuer.revoke_all()

    def reset(self) -> None:
        """Back to a fresh emulator (``expires_in`` included) but with the same clients, key and port.

        Starts a new generation: requests still in flight leave the new one alone. Requests parked by a
        hold stay parked until their hold is released (or the emulator stops).
        """
        with self._lock:
            self._generation += 1
            self._faults = Faults()
            self._counters = Counters()
            self._expires_in = self._initial_expires_in
            self._issuer.clear()
            self._store.clear()
            if self._limiter is not None:
                self._limiter.clear()

    # -- inspection ------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """How many times reset() has run."""
        with self._lock:
            return self._generation

    @property
    def token_requests(self) -> int:
        with self._lock:
            return self._counters.token_requests

    @property
    def issued_tokens(self) -> list[str]:
        with self._lock:
            return list(self._issuer.issued)

    @property
    def api_requests(self) -> int:
        with self._lock:
            return self._counters.api_requests

    @property
    def api_status_counts(self) -> dict[int, int]:
        with self._lock:
            return dict(self._counters.api_status_counts)

    @property
    def meters(self) -> list[dict[str, Any]]:
        with self._lock:
            return self._store.all()

    # -- request handling (called from server threads) -------------------------------------------

    def _dispatch(self, request: Request) -> Response:
        try:
            if request.path == TOKEN_PATH:
                return self._token_endpoint(request)
            if request.path == "/api" or request.path.startswith("/api/"):
                return self._api_endpoint(request)
        except _StaleRequestError:
            return _STALE
        return json_response(404, {"error": "not_found"})

    def _current(self, generation: int) -> None:
        """Raise _StaleRequestError when a reset() came after the request arrived; the caller holds the lock."""
        if generation != self._generation:
            raise _StaleRequestError

    def _wait(self, hold: RequestHold | None, delay: float) -> None:
        if hold is not None:
            hold.park()
        if delay:
            self._sleep(delay)  # real time by default on purpose: delays exist to trip client timeouts

    def _token_endpoint(self, request: Request) -> Response:
        with self._lock:
            generation = self._generation
            self._counters.token_requests += 1
            delay = self._faults.token_delay
            hold = claim_hold(self._faults.token_holds, request.method)
        try:
            self._wait(hold, delay)
            with self._lock:
                self._current(generation)
                outcome = self._token_outcome(request)
            if isinstance(outcome, Response):
                return outcome
            # User callbacks run outside the lock so they may read the emulator's properties.
            if self._on_token_issued is not None:
                self._on_token_issued(outcome.token)
            payload = outcome.payload if outcome.transform is None else outcome.transform(dict(outcome.payload))
            no_store = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))
            return json_response(200, payload, no_store)
        finally:
            if hold is not None:
                hold.done()

    def _token_outcome(self, request: Request) -> Response | _Issued:
        """Everything the token endpoint decides; the caller holds the lock."""
        faults = self._faults
        if faults.token_failures:
            return faults.token_failures.popleft()
        if faults.token_garbage:
            return faults.token_garbage.popleft()
        if request.method != "POST":
            return json_response(405, {"error": "method_not_allowed"}, (("Allow", "POST"),))
        if request.body is None:
            return oauth_error(413, "invalid_request", "Request body too large")
        form, form_error = parse_form(request)
        if self._limiter is not None:
            retry_after = self._limiter.admit(form.get("client_id", ""))
            if retry_after is not None:
                return json_response(
                    429,
                    {"error": "too_many_requests", "error_description": "Rate limit exceeded"},
                    (("Retry-After", str(retry_after)),),
                )
        if form_error is not None:
            return form_error
        grant_type = form.get("grant_type")
        if not grant_type:
            return oauth_error(400, "invalid_request", "Missing required parameter: grant_type")
        if grant_type != "client_credentials":
            return oauth_error(400, "unsupported_grant_type", "Only client_credentials is supported")
        for name in ("client_id", "client_secret", "audience"):
            if not form.get(name):
                return oauth_error(400, "invalid_request", f"Missing required parameter: {name}")
        if not self._credentials_valid(form["client_id"], form["client_secret"]):
            return oauth_error(401, "access_denied", "Unauthorized")
        audience = self.audience
        if form["audience"] != audience:
            return oauth_error(403, "access_denied", f"Service not found: {form['audience']}")
        token = self._issuer.issue(form["client_id"], audience, self._expires_in, DEFAULT_SCOPE)
        payload = {
            "access_token": token,
            "scope": DEFAULT_SCOPE,
            "expires_in": self._expires_in,
            "token_type": "Bearer",
        }
        transform = faults.token_transforms.popleft() if faults.token_transforms else None
        return _Issued(token, payload, transform)

    def _credentials_valid(self, client_id: str, client_secret: str) -> bool:
        expected = self._clients.get(client_id)
        # Compare even for unknown clients so timing does not reveal which client ids exist.
        matches = hmac.compare_digest((expected or "").encode(), client_secret.encode())
        return expected is not None and matches

    def _api_endpoint(self, request: Request) -> Response:
        with self._lock:
            generation = self._generation
            self._counters.api_requests += 1
            delay = self._faults.api_delay
            hold = claim_hold(self._faults.api_holds, request.method)
        try:
            self._wait(hold, delay)
            with self._lock:
                self._current(generation)
                injected = self._faults.api_failures.popleft() if self._faults.api_failures else None
                if injected is None:
                    injected = self._matching_failure(request)
            response = injected if injected is not None else self._api_response(request, generation)
            with self._lock:
                self._current(generation)
                self._counters.api_status_counts[response.status] += 1
            return response
        finally:
            if hold is not None:
                hold.done()

    def _matching_failure(self, request: Request) -> Response | None:
        searchable = json.dumps(request.query) + (request.body or b"").decode("utf-8", "replace")
        for text, response in self._faults.api_failures_matching:
            if text in searchable:
                return response
        return None

    def _api_response(self, request: Request, generation: int) -> Response:
        if not self._authenticated(request.authorization, generation):
            return json_response(
                401, {"error": "invalid_token"}, (("WWW-Authenticate", 'Bearer error="invalid_token"'),)
            )
        try:
            return self._route(request, generation)
        except ApiError as error:
            return error.response

    def _authenticated(self, authorization: str | None, generation: int) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        claims = self._issuer.decode(token, self.audience)
        if claims is None:
            return False
        with self._lock:
            self._current(generation)
            return not self._issuer.is_revoked(str(claims["jti"]))

    def _route(self, request: Request, generation: int) -> Response:
        path, method = request.path, request.method
        meter_id = path.removeprefix(METERS_PATH + "/") if path.startswith(METERS_PATH + "/") else ""
        if path == METERS_PATH:
            allowed: tuple[str, ...] = ("GET", "POST")
        elif path == METER_TYPES_PATH:
            allowed = ("GET",)
        elif meter_id and "/" not in meter_id:
            allowed = ("GET", "PATCH", "DELETE")
        else:
            raise ApiError(404, "not_found")
        if method not in allowed:
            return json_response(405, {"error": "method_not_allowed"}, (("Allow", ", ".join(allowed)),))
        if request.body is None:
            raise ApiError(413, "payload_too_large")
        body = parse_json(request.body) if method in ("POST", "PATCH") else None
        with self._lock:
            self._current(generation)
            if path == METER_TYPES_PATH:
                return json_response(200, {"meterTypes": self._store.meter_types()})
            if path == METERS_PATH and method == "GET":
                filters = {name: request.query[name][0] for name in _LIST_FILTERS if name in request.query}
                return json_response(200, {"meters": self._store.find(filters)})
            if path == METERS_PATH:
                return json_response(201, self._store.create(body))
            if method == "GET":
                return json_response(200, self._store.get(meter_id))
            if method == "PATCH":
                return json_response(200, self._store.update(meter_id, body))
            self._store.delete(meter_id)
            return Response(204)
