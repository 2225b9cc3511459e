"""What the emulator tests share: the emulator's clients, and requests to its token endpoint and API."""

from __future__ import annotations

from typing import Any

import jwt
import requests

from local.usage_engine_emulator import ISSUER, UsageEngineEmulator

CLIENT_ID = "emulator-test-client"
CLIENT_SECRET = "emulator-test-secret-0f3c9a"
OTHER_ID = "emulator-other-client"
OTHER_SECRET = "emulator-other-secret-77b1e2"
START = 1_800_000_000.0
METER = {"domain": "acme.example", "externalRef": "ext-1", "meterTypeId": "api-calls", "userId": "user-1"}
# Loopback answers in milliseconds; the timeout only keeps a broken test from hanging, so it is generous
# enough that a loaded machine never trips it.
TIMEOUT = 30.0
# Shorter than anything a test waits for, for requests parked by a hold that must trip the client's timeout
# (a parked request is never answered until released, so this cannot race).
PARKED_TIMEOUT = 0.2


def request_token(
    http: requests.Session,
    emulator: UsageEngineEmulator,
    *,
    client_id: str = CLIENT_ID,
    client_secret: str = CLIENT_SECRET,
    timeout: float = TIMEOUT,
    **overrides: str,
) -> requests.Response:
    form = {
        "client_id": client_id,
        "client_secret": client_secret,
        "grant_type": "client_credentials",
        "audience": emulator.audience,
        **overrides,
    }
    return http.post(emulator.token_url, data=form, timeout=timeout)


def api(
    http: requests.Session,
    emulator: UsageEngineEmulator,
    method: str,
    path: str,
    token: str | None,
    **kwargs: Any,
) -> requests.Response:
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    kwargs.setdefault("timeout", TIMEOUT)
    return http.request(method, emulator.base_url + path, headers=headers, **kwargs)


def decode(emulator: UsageEngineEmulator, access_token: str) -> dict[str, Any]:
    # The manual clock is far from the wall clock, so expiry is asserted by hand instead.
    claims: dict[str, Any] = jwt.decode(
        access_token,
        emulator.public_key_pem,
        algorithms=["RS256"],
        audience=emulator.audience,
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False},
    )
    return claims
