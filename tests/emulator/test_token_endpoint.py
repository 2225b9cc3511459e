"""The emulator's token endpoint and its rate limits, over real HTTP on loopback."""

from __future__ import annotations

import importlib
import time
from types import SimpleNamespace

import jwt
import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from local.usage_engine_emulator import DEFAULT_SCOPE, METERS_PATH, ManualClock, UsageEngineEmulator, _RateLimiter
from tests.emulator.support import (
    CLIENT_ID,
    CLIENT_SECRET,
    OTHER_ID,
    OTHER_SECRET,
    START,
    TIMEOUT,
    api,
    decode,
    request_token,
)

# -- token endpoint ----------------------------------------------------------------------------------


def test_issues_a_signed_jwt_with_the_vendor_claims(
    http: requests.Session, emulator: UsageEngineEmulator, issued: list[str]
) -> None:
    response = request_token(http, emulator)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "scope", "expires_in", "token_type"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == DEFAULT_SCOPE
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "RS256"
    assert header["kid"] == emulator.kid
    claims = decode(emulator, body["access_token"])
    assert claims["iss"] == "https://auth.digitalroute.io/"
    assert claims["sub"] == f"{CLIENT_ID}@clients"
    assert claims["aud"] == emulator.audience == emulator.base_url + "/"
    assert claims["iat"] == int(START)
    assert claims["exp"] == int(START) + 3600
    assert claims["scope"] == DEFAULT_SCOPE
    assert claims["gty"] == "client-credentials"
    assert len(claims["jti"]) == 32
    assert issued == emulator.issued_tokens == [body["access_token"]]


def test_token_from_another_emulator_does_not_verify(
    http: requests.Session, emulator: UsageEngineEmulator, token: str
) -> None:
    other = UsageEngineEmulator(audience=emulator.audience)
    with pytest.raises(jwt.InvalidSignatureError):
        decode(other, token)


def test_tokens_issued_in_the_same_second_differ(http: requests.Session, emulator: UsageEngineEmulator) -> None:
    first = request_token(http, emulator).json()["access_token"]
    second = request_token(http, emulator).json()["access_token"]

    assert first != second
    assert decode(emulator, first)["jti"] != decode(emulator, second)["jti"]


def test_explicit_audience_is_used(http: requests.Session, clock: ManualClock) -> None:
    with UsageEngineEmulator(clients={CLIENT_ID: CLIENT_SECRET}, audience="https://ue.example/", clock=clock) as emu:
        response = request_token(http, emu)
        assert emu.audience == "https://ue.example/"
        assert response.status_code == 200
        assert decode(emu, response.json()["access_token"])["aud"] == "https://ue.example/"


@pytest.mark.parametrize(
    ("client_id", "client_secret"),
    [(CLIENT_ID, "wrong-secret"), ("unknown-client", CLIENT_SECRET), (CLIENT_ID, OTHER_SECRET)],
)
def test_bad_credentials_are_401(
    http: requests.Session, emulator: UsageEngineEmulator, client_id: str, client_secret: str
) -> None:
    response = request_token(http, emulator, client_id=client_id, client_secret=client_secret)

    assert response.status_code == 401
    assert response.json() == {"error": "access_denied", "error_description": "Unauthorized"}
    assert client_secret not in response.text
    assert emulator.issued_tokens == []


def test_unknown_audience_is_403(http: requests.Session, emulator: UsageEngineEmulator) -> None:
    response = request_token(http, emulator, audience="https://elsewhere.example/")

    assert response.status_code == 403
    assert response.json() == {
        "error": "access_denied",
        "error_description": "Service not found: https://elsewhere.example/",
    }


def test_wrong_grant_type_is_400(http: requests.Session, emulator: UsageEngineEmulator) -> None:
    response = request_token(http, emulator, grant_type="password")

    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


def test_json_body_is_400(http: requests.Session, emulator: UsageEngineEmulator) -> None:
    form = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "grant_type": "client_credentials",
        "audience": emulator.audience,
    }
    response = http.post(emulator.token_url, json=form, timeout=TIMEOUT)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert CLIENT_SECRET not in response.text


@pytest.mark.parametrize("missing", ["client_id", "client_secret", "grant_type", "audience"])
def test_missing_field_is_400_naming_it(http: requests.Session, emulator: UsageEngineEmulator, missing: str) -> None:
    form = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "grant_type": "client_credentials",
        "audience": emulator.audience,
    }
    del form[missing]
    response = http.post(emulator.token_url, data=form, timeout=TIMEOUT)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert missing in response.json()["error_description"]


def test_token_endpoint_only_accepts_post(http: requests.Session, emulator: UsageEngineEmulator) -> None:
    response = http.get(emulator.token_url, timeout=TIMEOUT)

    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


# -- rate limits --------------------------------------------------------------------------------------


def test_burst_of_five_then_429(http: requests.Session, emulator: UsageEngineEmulator, clock: ManualClock) -> None:
    statuses = [request_token(http, emulator).status_code for _ in range(6)]

    assert statuses == [200, 200, 200, 200, 200, 429]
    limited = request_token(http, emulator)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "1"
    assert limited.json()["error"] == "too_many_requests"
    # Another client has its own bucket.
    assert request_token(http, emulator, client_id=OTHER_ID, client_secret=OTHER_SECRET).status_code == 200
    # 10 requests/s refill: a tenth of a second buys exactly one more request.
    clock.advance(0.1)
    assert [request_token(http, emulator).status_code for _ in range(2)] == [200, 429]
    assert emulator.token_requests == 10
    assert len(emulator.issued_tokens) == 7


def test_rate_limit_applies_before_credentials(http: requests.Session, emulator: UsageEngineEmulator) -> None:
    statuses = [request_token(http, emulator, client_secret="wrong").status_code for _ in range(6)]

    assert statuses == [401] * 5 + [429]
    assert request_token(http, emulator).status_code == 429


def test_five_minute_window_caps_at_1000(
    http: requests.Session, emulator: UsageEngineEmulator, clock: ManualClock
) -> None:
    # Wrong secrets keep this fast (no signing) while still counting against the window.
    for _ in range(1000):
        assert request_token(http, emulator, client_secret="wrong").status_code == 401
        clock.advance(0.125)  # refills the bucket, so only the window can refuse

    refused = request_token(http, emulator)
    assert refused.status_code == 429
    # The first admitted request (at START) leaves the window at START + 300; it is now START + 125.
    assert refused.headers["Retry-After"] == "175"
    clock.now = START + 300
    assert request_token(http, emulator).status_code == 200


def test_rate_limit_can_be_disabled(http: requests.Session, clock: ManualClock) -> None:
    with UsageEngineEmulator(clients={CLIENT_ID: CLIENT_SECRET}, clock=clock, rate_limit=False) as emu:
        statuses = {request_token(http, emu).status_code for _ in range(8)}
    assert statuses == {200}


def test_the_rate_limiter_keeps_its_constructor_and_runs_on_the_clock_it_is_given() -> None:
    clock = ManualClock(START)
    limiter = _RateLimiter(clock)
    assert [limiter.admit("client") for _ in range(6)] == [None] * 5 + [1]
    clock.advance(0.1)
    assert [limiter.admit("client"), limiter.admit("client")] == [None, 1]
    # Without a clock it uses the wall clock: a fresh client still has its burst.
    assert _RateLimiter().admit("client") is None


def test_a_manual_rate_limit_clock_freezes_the_limit_whatever_the_machine_speed(http: requests.Session) -> None:
    limit_clock = ManualClock()
    with UsageEngineEmulator(clients={CLIENT_ID: CLIENT_SECRET}, rate_limit_clock=limit_clock) as emu:
        # However long these take in real time, the limiter's time stands still: no refill.
        statuses = [request_token(http, emu).status_code for _ in range(8)]
        assert statuses == [200] * 5 + [429] * 3
        limit_clock.advance(0.1)
        assert [request_token(http, emu).status_code for _ in range(2)] == [200, 429]
        # Token lifetimes still follow the emulator's own (wall) clock: the tokens work.
        assert api(http, emu, "GET", METERS_PATH, emu.issued_tokens[-1]).status_code == 200


def test_a_client_waiting_out_retry_after_on_the_manual_clock_gets_through(
    http: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a test of a rate-limited client does: the client's Retry-After waits advance the limiter's
    clock instead of passing in real time, so exactly the burst is admitted before the first 429."""
    limit_clock = ManualClock()
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        limit_clock.advance(seconds)

    monkeypatch.setattr(
        importlib.import_module("urllib3.util.retry"), "time", SimpleNamespace(sleep=wait, time=time.time)
    )
    retry = Retry(total=3, status_forcelist=[429], allowed_methods=None, backoff_factor=0)
    http.mount("http://", HTTPAdapter(max_retries=retry))
    with UsageEngineEmulator(clients={CLIENT_ID: CLIENT_SECRET}, rate_limit_clock=limit_clock) as emu:
        statuses = [request_token(http, emu).status_code for _ in range(7)]
        assert statuses == [200] * 7
        assert emu.token_requests == 8
    assert waits == [1]
