"""The Usage Engine emulator's state: rate limits, issued tokens and meters, and the replies it builds.

`local.usage_engine_emulator` serves these over HTTP and is the public face; everything here is guarded by
its lock unless a docstring says otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ISSUER = "https://auth.digitalroute.io/"
DEFAULT_SCOPE = (
    "read:meters create:meters update:meters delete:meters read:meter_types create:meter_types update:meter_types"
)
RATE_BURST = 5
RATE_PER_SECOND = 10.0
RATE_WINDOW_SECONDS = 300.0
RATE_WINDOW_LIMIT = 1000

_DEFAULT_METER_TYPES: tuple[dict[str, str], ...] = (
    {"id": "api-calls", "name": "API calls", "unit": "call"},
    {"id": "storage-gb", "name": "Storage", "unit": "GB"},
)
_CREATE_FIELDS = ("domain", "externalRef", "meterTypeId", "userId")
_PATCH_FIELDS = frozenset({"value", "resetAt"})


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, json.dumps(payload, separators=(",", ":")).encode(), headers=headers)


def oauth_error(status: int, error: str, description: str) -> Response:
    return json_response(status, {"error": error, "error_description": description})


class ApiError(Exception):
    """Carries a finished error response out of deep validation code."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.response = json_response(status, {"error": message, **extra})


def _retry_after(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def _utc_iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ManualClock:
    """A clock that moves only when told to: the emulator's `clock` or `rate_limit_clock` for tests whose
    outcome must not depend on how fast the machine runs them. Left alone it is frozen; `sleep` advances it
    instead of waiting, so it can also stand in for the client's retry waits. Thread-safe."""

    def __init__(self, start: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._now = start

    def __call__(self) -> float:
        with self._lock:
            return self._now

    @property
    def now(self) -> float:
        return self()

    @now.setter
    def now(self, value: float) -> None:
        with self._lock:
            self._now = value

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock only moves forward: seconds must be >= 0")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)


@dataclass
class _ClientBudget:
    tokens: float
    updated: float
    admitted: deque[float] = field(default_factory=deque)


class RateLimiter:
    """Per-client token bucket plus a sliding-window count. Callers hold the emulator lock.

    The bucket refills as `clock` moves: the wall clock by default; a `ManualClock` makes the limiter
    deterministic (nothing refills until the test, or a recorded client wait, advances it).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
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


class TokenIssuer:
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


class MeterStore:
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
            raise ApiError(400, "body must be a JSON object")
        for name in _CREATE_FIELDS:
            value = body.get(name)
            if not isinstance(value, str) or not value:
                raise ApiError(400, f"{name} must be a non-empty string")
        if not any(meter_type["id"] == body["meterTypeId"] for meter_type in self._types):
            raise ApiError(400, f"meterTypeId is unknown: {body['meterTypeId']}")
        for meter in self._meters.values():
            if meter["domain"] == body["domain"] and meter["externalRef"] == body["externalRef"]:
                raise ApiError(409, "conflict", id=meter["id"])
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
            raise ApiError(400, "body must be a JSON object with value and/or resetAt")
        unknown = sorted(set(body) - _PATCH_FIELDS)
        if unknown:
            raise ApiError(400, f"field cannot be updated: {unknown[0]}")
        value = body.get("value", meter["value"])
        # bool is an int subclass, but `true` is not a meter reading.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ApiError(400, "value must be a number")
        reset_at = body.get("resetAt", meter["resetAt"])
        if reset_at is not None and not isinstance(reset_at, str):
            raise ApiError(400, "resetAt must be a string or null")
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
            raise ApiError(404, "not_found")
        return meter


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "malformed JSON body") from exc
