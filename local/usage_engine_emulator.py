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

Fault knobs (failures, garbage, delays, revocation) let tests drive the client through the bad days.
All mutable state sits behind one lock; nothing happens at import time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from local.loopback_http import LoopbackHTTPServer, LoopbackRequestHandler, Reply

TOKEN_PATH = "/authentication/v1/oauth/token"
METERS_PATH = "/api/usage-metering/v1/meters"
# The vendor does not document where meter types live; this is the one place that guess is made.
METER_TYPES_PATH = "/api/usage-metering/v1/meter-types"
ISSUER = "https://auth.digitalroute.io/"
DEFAULT_SCOPE = (
    "read:meters create:meters update:meters delete:meters read:meter_types create:meter_types update:meter_types"
)
MAX_BODY_BYTES = 1024 * 1024
# Oversized bodies up to this size are read and dropped so the 413 reaches the client intact.
MAX_DRAIN_BYTES = 16 * MAX_BODY_BYTES
RATE_BURST = 5
RATE_PER_SECOND = 10.0
RATE_WINDOW_SECONDS = 300.0
RATE_WINDOW_LIMIT = 1000

_DEFAULT_METER_TYPES: tuple[dict[str, str], ...] = (
    {"id": "api-calls", "name": "API calls", "unit": "call"},
    {"id": "storage-gb", "name": "Storage", "unit": "GB"},
)
_CREATE_FIELDS = ("domain", "externalRef", "meterTypeId", "userId")
_LIST_FILTERS = ("userId", "externalRef", "domain")
_PATCH_FIELDS = frozenset({"value", "resetAt"})


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    authorization: str | None
    body: bytes | None  # None: over MAX_BODY_BYTES, answered with 413


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def _json(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> _Response:
    return _Response(status, json.dumps(payload, separators=(",", ":")).encode(), headers=headers)


def _oauth_error(status: int, error: str, description: str) -> _Response:
    return _json(status, {"error": error, "error_description": description})


class _ApiError(Exception):
    """Carries a finished error response out of deep validation code."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.response = _json(status, {"error": message, **extra})


def _retry_after(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def _utc_iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _ClientBudget:
    tokens: float
    updated: float
    admitted: deque[float] = field(default_factory=deque)


class _RateLimiter:
    """Per-client token bucket plus a sliding-window count. Callers hold the emulator lock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._clients: dict[str, _ClientBudget] = {}

    def admit(self, client_id: str) -> int | None:
        """Consume one request; return None when allowed, else the Retry-After seconds."""
        now = self._clock()
        budget = self._clients.setdefault(client_id, _ClientBudget(tokens=RATE_BURST, updated=now))
        # A fake clock that steps backwards must neither refill nor drain the bucket.
        elapsed = max(0.0, now - budget.updated)
        budget.tokens = min(float(RATE_BURST), budget.tokens + elapsed * RATE_PER_SECOND)
        budget.updated = max(budget.updated, now)
        window = budget.admitted
        while window and window[0] <= now - RATE_WINDOW_SECONDS:
            window.popleft()
        if len(window) >= RATE_WINDOW_LIMIT:
            return _retry_after(window[0] + RATE_WINDOW_SECONDS - now)
        # The tolerance absorbs float error: at epoch-sized clock values 0.1 s of refill is 0.99999990 tokens.
        if budget.tokens < 1 - 1e-6:
            return _retry_after((1 - budget.tokens) / RATE_PER_SECOND)
        # Only admitted requests count against the window, so a client hammering through 429s
        # recovers as soon as the documented window allows.
        budget.tokens -= 1
        window.append(now)
        return None

    def clear(self) -> None:
        self._clients.clear()


class _TokenIssuer:
    """Signs and verifies access tokens; remembers what it issued so it can revoke it.

    ``issue``/``revoke_all``/``clear``/``is_revoked`` need the emulator lock; ``decode`` only reads
    immutable key material, so it runs outside the lock.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_key = self._private_key.public_key()
        self.public_key_pem = self.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        der = self.public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        self.kid = base64.urlsafe_b64encode(hashlib.sha256(der).digest()[:12]).decode().rstrip("=")
        self.issued: list[str] = []
        self._issued_jtis: list[str] = []
        self._revoked: set[str] = set()

    def issue(self, client_id: str, audience: str, expires_in: int, scope: str) -> str:
        issued_at = int(self._clock())
        jti = uuid.uuid4().hex
        claims = {
            "iss": ISSUER,
            "sub": f"{client_id}@clients",
            "aud": audience,
            "iat": issued_at,
            "exp": issued_at + expires_in,
            "scope": scope,
            "gty": "client-credentials",
            "jti": jti,
        }
        token = jwt.encode(claims, self._private_key, algorithm="RS256", headers={"kid": self.kid})
        self.issued.append(token)
        self._issued_jtis.append(jti)
        return token

    def decode(self, token: str, audience: str) -> dict[str, Any] | None:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.public_key,
                algorithms=["RS256"],
                audience=audience,
                issuer=ISSUER,
                # Expiry is checked below against the injected clock; PyJWT would use the wall clock.
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "require": ["exp", "iat", "jti", "sub"],
                },
            )
        except jwt.PyJWTError:
            return None
        expires_at = claims["exp"]
        if not isinstance(expires_at, int | float) or self._clock() >= expires_at:
            return None
        return claims

    def is_revoked(self, jti: str) -> bool:
        return jti in self._revoked

    def revoke_all(self) -> None:
        self._revoked.update(self._issued_jtis)

    def clear(self) -> None:
        self.issued.clear()
        self._issued_jtis.clear()
        self._revoked.clear()


class _MeterStore:
    """Meters and meter types, validated the way the API validates them. Callers hold the emulator lock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._meters: dict[str, dict[str, Any]] = {}
        self._types = [dict(meter_type) for meter_type in _DEFAULT_METER_TYPES]

    def meter_types(self) -> list[dict[str, Any]]:
        return [dict(meter_type) for meter_type in self._types]

    def all(self) -> list[dict[str, Any]]:
        return [dict(meter) for meter in self._meters.values()]

    def find(self, filters: Mapping[str, str]) -> list[dict[str, Any]]:
        return [
            dict(meter)
            for meter in self._meters.values()
            if all(meter[name] == wanted for name, wanted in filters.items())
        ]

    def create(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _ApiError(400, "body must be a JSON object")
        for name in _CREATE_FIELDS:
            value = body.get(name)
            if not isinstance(value, str) or not value:
                raise _ApiError(400, f"{name} must be a non-empty string")
        if not any(meter_type["id"] == body["meterTypeId"] for meter_type in self._types):
            raise _ApiError(400, f"meterTypeId is unknown: {body['meterTypeId']}")
        for meter in self._meters.values():
            if meter["domain"] == body["domain"] and meter["externalRef"] == body["externalRef"]:
                raise _ApiError(409, "conflict", id=meter["id"])
        meter = {
            "id": str(uuid.uuid4()),
            **{name: body[name] for name in _CREATE_FIELDS},
            "value": 0,
            "resetAt": None,
            "createdAt": _utc_iso(self._clock()),
        }
        self._meters[meter["id"]] = meter
        return dict(meter)

    def get(self, meter_id: str) -> dict[str, Any]:
        return dict(self._existing(meter_id))

    def update(self, meter_id: str, body: Any) -> dict[str, Any]:
        meter = self._existing(meter_id)
        if not isinstance(body, dict) or not body:
            raise _ApiError(400, "body must be a JSON object with value and/or resetAt")
        unknown = sorted(set(body) - _PATCH_FIELDS)
        if unknown:
            raise _ApiError(400, f"field cannot be updated: {unknown[0]}")
        value = body.get("value", meter["value"])
        # bool is an int subclass, but `true` is not a meter reading.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _ApiError(400, "value must be a number")
        reset_at = body.get("resetAt", meter["resetAt"])
        if reset_at is not None and not isinstance(reset_at, str):
            raise _ApiError(400, "resetAt must be a string or null")
        meter["value"] = value
        meter["resetAt"] = reset_at
        return dict(meter)

    def delete(self, meter_id: str) -> None:
        self._existing(meter_id)
        del self._meters[meter_id]

    def clear(self) -> None:
        self._meters.clear()

    def _existing(self, meter_id: str) -> dict[str, Any]:
        meter = self._meters.get(meter_id)
        if meter is None:
            raise _ApiError(404, "not_found")
        return meter


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise _ApiError(400, "malformed JSON body") from exc


def _parse_form(request: _Request) -> tuple[dict[str, str], _Response | None]:
    """Return the form fields, or an error response; never raises, so rate limiting can still key on it."""
    media_type = request.content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        return {}, _oauth_error(400, "invalid_request", "Content-Type must be application/x-www-form-urlencoded")
    try:
        raw = parse_qs((request.body or b"").decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        return {}, _oauth_error(400, "invalid_request", "Malformed form body")
    form = {name: values[0] for name, values in raw.items()}
    duplicated = sorted(name for name, values in raw.items() if len(values) > 1)
    if duplicated:
        return form, _oauth_error(400, "invalid_request", f"Parameter repeated: {duplicated[0]}")
    return form, None


@dataclass
class _Faults:
    token_delay: float = 0.0
    token_failures: deque[_Response] = field(default_factory=deque)
    token_garbage: deque[_Response] = field(default_factory=deque)
    token_transforms: deque[Callable[[dict[str, Any]], dict[str, Any]]] = field(default_factory=deque)
    api_delay: float = 0.0
    api_failures: deque[_Response] = field(default_factory=deque)
    api_failures_matching: list[tuple[str, _Response]] = field(default_factory=list)


@dataclass
class _Counters:
    token_requests: int = 0
    api_requests: int = 0
    api_status_counts: Counter[int] = field(default_factory=Counter)


@dataclass(frozen=True)
class _Issued:
    token: str
    payload: dict[str, Any]
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None


def _check_count(count: int) -> None:
    if count < 0:
        raise ValueError("count must be >= 0")


def _check_status(status: int) -> None:
    if not 200 <= status <= 599:
        raise ValueError("status must be between 200 and 599")


def _check_delay(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("delay must be >= 0")


class UsageEngineEmulator:
    """The emulated service. Use as a context manager, or ``start()``/``stop()``."""

    def __init__(
        self,
        *,
        clients: Mapping[str, str] | None = None,
        audience: str | None = None,
        expires_in: int = 3600,
        rate_limit: bool = True,
        clock: Callable[[], float] = time.time,
        on_token_issued: Callable[[str], None] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._clients = dict(clients or {})
        self._audience = audience
        self._initial_expires_in = expires_in
        self._expires_in = expires_in
        self._clock = clock
        self._on_token_issued = on_token_issued
        self._issuer = _TokenIssuer(clock)
        self._limiter = _RateLimiter(clock) if rate_limit else None
        self._store = _MeterStore(clock)
        self._faults = _Faults()
        self._counters = _Counters()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> UsageEngineEmulator:
        if self._server is not None:
            raise RuntimeError("emulator already started; create a new one to serve again")
        self._server = _Server(self)
        self._thread = self._server.serve_in_background("usage-engine-emulator")
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None or not thread.is_alive():
            return
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

    # -- fault knobs -----------------------------------------------------------------------------

    def fail_next_token_requests(
        self,
        count: int,
        status: int,
        *,
        retry_after: int | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> None:
        _check_count(count)
        _check_status(status)
        headers = () if retry_after is None else (("Retry-After", str(retry_after)),)
        payload = b'{"error":"server_error"}' if body is None else body
        response = _Response(status, payload, content_type, headers)
        with self._lock:
            self._faults.token_failures.extend([response] * count)

    def garble_next_token_responses(
        self,
        count: int,
        body: bytes = b"<html>upstream error</html>",
        *,
        status: int = 200,
        content_type: str = "text/html",
    ) -> None:
        _check_count(count)
        _check_status(status)
        with self._lock:
            self._faults.token_garbage.extend([_Response(status, body, content_type)] * count)

    def transform_next_token_responses(self, count: int, transform: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Rewrite the next ``count`` successful token responses (failed requests do not use one up)."""
        _check_count(count)
        with self._lock:
            self._faults.token_transforms.extend([transform] * count)

    def set_token_delay(self, seconds: float) -> None:
        _check_delay(seconds)
        with self._lock:
            self._faults.token_delay = seconds

    def set_expires_in(self, seconds: int) -> None:
        with self._lock:
            self._expires_in = seconds

    def fail_next_api_requests(self, count: int, status: int, *, retry_after: int | None = None) -> None:
        _check_count(count)
        _check_status(status)
        headers = () if retry_after is None else (("Retry-After", str(retry_after)),)
        response = _json(status, {"error": "injected"}, headers)
        with self._lock:
            self._faults.api_failures.extend([response] * count)

    def fail_api_requests_matching(self, text: str, status: int) -> None:
        """Answer `status` to every API request whose query string or body contains `text`, until reset():
        one record's calls fail throughout while the others succeed."""
        _check_status(status)
        if not text:
            raise ValueError("text must not be empty")
        with self._lock:
            self._faults.api_failures_matching.append((text, _json(status, {"error": "injected"})))

    def clear_api_faults(self) -> None:
        """The API recovers: forget injected API failures and delay, keep meters and tokens."""
        with self._lock:
            self._faults.api_failures.clear()
            self._faults.api_failures_matching.clear()
            self._faults.api_delay = 0.0

    def set_api_delay(self, seconds: float) -> None:
        _check_delay(seconds)
        with self._lock:
            self._faults.api_delay = seconds

    def revoke_all_tokens(self) -> None:
        with self._lock:
            self._issuer.revoke_all()

    def reset(self) -> None:
        """Back to a fresh emulator (``expires_in`` included) but with the same clients, key and port."""
        with self._lock:
            self._faults = _Faults()
            self._counters = _Counters()
            self._expires_in = self._initial_expires_in
            self._issuer.clear()
            self._store.clear()
            if self._limiter is not None:
                self._limiter.clear()

    # -- inspection ------------------------------------------------------------------------------

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

    def _dispatch(self, request: _Request) -> _Response:
        if request.path == TOKEN_PATH:
            return self._token_endpoint(request)
        if request.path == "/api" or request.path.startswith("/api/"):
            return self._api_endpoint(request)
        return _json(404, {"error": "not_found"})

    def _token_endpoint(self, request: _Request) -> _Response:
        with self._lock:
            self._counters.token_requests += 1
            delay = self._faults.token_delay
        if delay:
            time.sleep(delay)  # real time on purpose: delays exist to trip client timeouts
        with self._lock:
            outcome = self._token_outcome(request)
        if isinstance(outcome, _Response):
            return outcome
        # User callbacks run outside the lock so they may read the emulator's properties.
        if self._on_token_issued is not None:
            self._on_token_issued(outcome.token)
        payload = outcome.payload if outcome.transform is None else outcome.transform(dict(outcome.payload))
        no_store = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))
        return _json(200, payload, no_store)

    def _token_outcome(self, request: _Request) -> _Response | _Issued:
        """Everything the token endpoint decides; the caller holds the lock."""
        faults = self._faults
        if faults.token_failures:
            return faults.token_failures.popleft()
        if faults.token_garbage:
            return faults.token_garbage.popleft()
        if request.method != "POST":
            return _json(405, {"error": "method_not_allowed"}, (("Allow", "POST"),))
        if request.body is None:
            return _oauth_error(413, "invalid_request", "Request body too large")
        form, form_error = _parse_form(request)
        if self._limiter is not None:
            retry_after = self._limiter.admit(form.get("client_id", ""))
            if retry_after is not None:
                return _json(
                    429,
                    {"error": "too_many_requests", "error_description": "Rate limit exceeded"},
                    (("Retry-After", str(retry_after)),),
                )
        if form_error is not None:
            return form_error
        grant_type = form.get("grant_type")
        if not grant_type:
            return _oauth_error(400, "invalid_request", "Missing required parameter: grant_type")
        if grant_type != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", "Only client_credentials is supported")
        for name in ("client_id", "client_secret", "audience"):
            if not form.get(name):
                return _oauth_error(400, "invalid_request", f"Missing required parameter: {name}")
        if not self._credentials_valid(form["client_id"], form["client_secret"]):
            return _oauth_error(401, "access_denied", "Unauthorized")
        audience = self.audience
        if form["audience"] != audience:
            return _oauth_error(403, "access_denied", f"Service not found: {form['audience']}")
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

    def _api_endpoint(self, request: _Request) -> _Response:
        with self._lock:
            self._counters.api_requests += 1
            delay = self._faults.api_delay
        if delay:
            time.sleep(delay)
        with self._lock:
            injected = self._faults.api_failures.popleft() if self._faults.api_failures else None
            if injected is None:
                injected = self._matching_failure(request)
        response = injected if injected is not None else self._api_response(request)
        with self._lock:
            self._counters.api_status_counts[response.status] += 1
        return response

    def _matching_failure(self, request: _Request) -> _Response | None:
        searchable = json.dumps(request.query) + (request.body or b"").decode("utf-8", "replace")
        for text, response in self._faults.api_failures_matching:
            if text in searchable:
                return response
        return None

    def _api_response(self, request: _Request) -> _Response:
        if not self._authenticated(request.authorization):
            return _json(401, {"error": "invalid_token"}, (("WWW-Authenticate", 'Bearer error="invalid_token"'),))
        try:
            return self._route(request)
        except _ApiError as error:
            return error.response

    def _authenticated(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        claims = self._issuer.decode(token, self.audience)
        if claims is None:
            return False
        with self._lock:
            return not self._issuer.is_revoked(str(claims["jti"]))

    def _route(self, request: _Request) -> _Response:
        path, method = request.path, request.method
        meter_id = path.removeprefix(METERS_PATH + "/") if path.startswith(METERS_PATH + "/") else ""
        if path == METERS_PATH:
            allowed: tuple[str, ...] = ("GET", "POST")
        elif path == METER_TYPES_PATH:
            allowed = ("GET",)
        elif meter_id and "/" not in meter_id:
            allowed = ("GET", "PATCH", "DELETE")
        else:
            raise _ApiError(404, "not_found")
        if method not in allowed:
            return _json(405, {"error": "method_not_allowed"}, (("Allow", ", ".join(allowed)),))
        if request.body is None:
            raise _ApiError(413, "payload_too_large")
        body = _parse_json(request.body) if method in ("POST", "PATCH") else None
        with self._lock:
            if path == METER_TYPES_PATH:
                return _json(200, {"meterTypes": self._store.meter_types()})
            if path == METERS_PATH and method == "GET":
                filters = {name: request.query[name][0] for name in _LIST_FILTERS if name in request.query}
                return _json(200, {"meters": self._store.find(filters)})
            if path == METERS_PATH:
                return _json(201, self._store.create(body))
            if method == "GET":
                return _json(200, self._store.get(meter_id))
            if method == "PATCH":
                return _json(200, self._store.update(meter_id, body))
            self._store.delete(meter_id)
            return _Response(204)


class _Handler(LoopbackRequestHandler):
    server: _Server

    def do_PATCH(self) -> None:  # noqa: N802 - http.server looks handlers up as do_<METHOD>
        self._serve()

    def length_required(self) -> Reply:
        return _wire(_json(411, {"error": "length_required"}))

    def invalid_length(self) -> Reply:
        return _wire(_json(400, {"error": "invalid Content-Length"}))

    def read_body(self, length: int) -> bytes | None:
        if length > MAX_DRAIN_BYTES:
            # The unread body would be parsed as the next request: this connection ends after the 413.
            self.close_connection = True
            return None
        if length > MAX_BODY_BYTES:
            # Read and drop it: closing with unread data makes the kernel send RST, and the client
            # would see "connection reset" instead of the 413.
            remaining = length
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 65536))
                if not chunk:
                    break
                remaining -= len(chunk)
            return None
        return self.rfile.read(length)

    def dispatch(self, body: bytes | None) -> Reply:
        target = urlsplit(self.path)
        request = _Request(
            method=self.command,
            path=target.path,
            query=parse_qs(target.query, keep_blank_values=True),
            content_type=self.headers.get("Content-Type", ""),
            authorization=self.headers.get("Authorization"),
            body=body,
        )
        try:
            response = self.server.emulator._dispatch(request)
        except Exception:
            # A user callback (transform, on_token_issued) failed: answer, then let the server log it.
            self.close_connection = True
            self.send_reply(_wire(_json(500, {"error": "internal_error"})))
            raise
        return _wire(response)


def _wire(response: _Response) -> Reply:
    # A 204 has no body, so it carries no Content-Type either.
    if response.status == 204:
        return Reply(response.status, response.body, response.headers)
    return Reply(response.status, response.body, (*response.headers, ("Content-Type", response.content_type)))


class _Server(LoopbackHTTPServer):
    def __init__(self, emulator: UsageEngineEmulator) -> None:
        self.emulator = emulator
        super().__init__(_Handler)
