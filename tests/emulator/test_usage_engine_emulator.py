"""The Usage Engine emulator, exercised over real HTTP on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
import requests

from local.usage_engine_emulator import (
    DEFAULT_SCOPE,
    ISSUER,
    METER_TYPES_PATH,
    METERS_PATH,
    TOKEN_PATH,
    UsageEngineEmulator,
)
from tests import leak_guard

CLIENT_ID = "emulator-test-client"
CLIENT_SECRET = "emulator-test-secret-0f3c9a"
OTHER_ID = "emulator-other-client"
OTHER_SECRET = "emulator-other-secret-77b1e2"
START = 1_800_000_000.0
METER = {"domain": "acme.example", "externalRef": "ext-1", "meterTypeId": "api-calls", "userId": "user-1"}


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[UsageEngineEmulator, FakeClock, list[str]]]:
    # One server for the module keeps the file fast (key generation dominates), and makes every test
    # also a test of reset(): each one must start from a fresh-looking emulator.
    clock, issued = FakeClock(), list[str]()

    def on_token_issued(token: str) -> None:
        issued.append(token)
        leak_guard.forbid(token)

    clients = {CLIENT_ID: CLIENT_SECRET, OTHER_ID: OTHER_SECRET}
    with UsageEngineEmulator(clients=clients, clock=clock, on_token_issued=on_token_issued) as emu:
        yield emu, clock, issued


@pytest.fixture
def clock(shared: tuple[UsageEngineEmulator, FakeClock, list[str]]) -> FakeClock:
    shared[1].now = START
    return shared[1]


@pytest.fixture
def issued(shared: tuple[UsageEngineEmulator, FakeClock, list[str]]) -> list[str]:
    shared[2].clear()
    return shared[2]


@pytest.fixture
def emulator(
    shared: tuple[UsageEngineEmulator, FakeClock, list[str]], clock: FakeClock, issued: list[str]
) -> UsageEngineEmulator:
    shared[0].reset()
    return shared[0]


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def request_token(
    http: requests.Session,
    emulator: UsageEngineEmulator,
    *,
    client_id: str = CLIENT_ID,
    client_secret: str = CLIENT_SECRET,
    **overrides: str,
) -> requests.Response:
    form = {
        "client_id": client_id,
        "client_secret": client_secret,
        "grant_type": "client_credentials",
        "audience": emulator.audience,
        **overrides,
    }
    return http.post(emulator.token_url, data=form, timeout=5)


@pytest.fixture
def token(http: requests.Session, emulator: UsageEngineEmulator) -> str:
    response = request_token(http, emulator)
    assert response.status_code == 200
    access_token: str = response.json()["access_token"]
    return access_token


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
    return http.request(method, emulator.base_url + path, headers=headers, timeout=5, **kwargs)


def decode(emulator: UsageEngineEmulator, access_token: str) -> dict[str, Any]:
    # The fake clock is far from the wall clock, so expiry is asserted by hand instead.
    claims: dict[str, Any] = jwt.decode(
        access_token,
        emulator.public_key_pem,
        algorithms=["RS256"],
        audience=emulator.audience,
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False},
    )
    return claims


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


def test_explicit_audience_is_used(http: requests.Session, clock: FakeClock) -> None:
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
    response = http.post(emulator.token_url, json=form, timeout=5)

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
    response = http.post(emulator.token_url, data=form, timeout=5)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert missing in response.json()["error_description"]


def test_token_endpoint_only_accepts_post(http: requests.Session, emulator: UsageEngineEmulator) -> None:
    response = http.get(emulator.token_url, timeout=5)

    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


# -- rate limits --------------------------------------------------------------------------------------


def test_burst_of_five_then_429(http: requests.Session, emulator: UsageEngineEmulator, clock: FakeClock) -> None:
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
    http: requests.Session, emulator: UsageEngineEmulator, clock: FakeClock
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


def test_rate_limit_can_be_disabled(http: requests.Session, clock: FakeClock) -> None:
    with UsageEngineEmulator(clients={CLIENT_ID: CLIENT_SECRET}, clock=clock, rate_limit=False) as emu:
        statuses = {request_token(http, emu).status_code for _ in range(8)}
    assert statuses == {200}


# -- meters ---------------------------------------------------------------------------------------------


def test_meter_crud_round_trip(http: requests.Session, emulator: UsageEngineEmulator, token: str) -> None:
    created = api(http, emulator, "POST", METERS_PATH, token, json=METER)
    assert created.status_code == 201
    meter = created.json()
    assert {key: meter[key] for key in METER} == METER
    assert meter["value"] == 0
    assert meter["resetAt"] is None
    assert meter["createdAt"] == "2027-01-15T08:00:00.000Z"
    meter_id = meter["id"]

    other = api(http, emulator, "POST", METERS_PATH, token, json={**METER, "externalRef": "ext-2", "userId": "u2"})
    assert other.status_code == 201
    listed = api(http, emulator, "GET", METERS_PATH, token)
    assert listed.status_code == 200
    assert [m["id"] for m in listed.json()["meters"]] == [meter_id, other.json()["id"]]
    filtered = api(http, emulator, "GET", METERS_PATH, token, params={"userId": "user-1", "domain": "acme.example"})
    assert [m["id"] for m in filtered.json()["meters"]] == [meter_id]
    none = api(http, emulator, "GET", METERS_PATH, token, params={"externalRef": "nope"})
    assert none.json() == {"meters": []}

    assert api(http, emulator, "GET", f"{METERS_PATH}/{meter_id}", token).json() == meter

    patched = api(http, emulator, "PATCH", f"{METERS_PATH}/{meter_id}", token, json={"value": 42.5})
    assert patched.status_code == 200
    assert patched.json() == {**meter, "value": 42.5}
    reset_at = "2027-02-01T00:00:00Z"
    patched = api(http, emulator, "PATCH", f"{METERS_PATH}/{meter_id}", token, json={"resetAt": reset_at})
    assert patched.json() == {**meter, "value": 42.5, "resetAt": reset_at}
    cleared = api(http, emulator, "PATCH", f"{METERS_PATH}/{meter_id}", token, json={"value": 1, "resetAt": None})
    assert cleared.json() == {**meter, "value": 1, "resetAt": None}
    assert emulator.meters[0] == cleared.json()

    deleted = api(http, emulator, "DELETE", f"{METERS_PATH}/{meter_id}", token)
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert api(http, emulator, "GET", f"{METERS_PATH}/{meter_id}", token).status_code == 404
    assert api(http, emulator, "DELETE", f"{METERS_PATH}/{meter_id}", token).status_code == 404
    assert [m["externalRef"] for m in emulator.meters] == ["ext-2"]


def test_duplicate_external_ref_is_409_with_existing_id(
    http: requests.Session, emulator: UsageEngineEmulator, token: str
) -> None:
    first = api(http, emulator, "POST", METERS_PATH, token, json=METER).json()

    duplicate = api(http, emulator, "POST", METERS_PATH, token, json={**METER, "userId": "someone-else"})
    assert duplicate.status_code == 409
    assert duplicate.json() == {"error": "conflict", "id": first["id"]}
    other_domain = api(http, emulator, "POST", METERS_PATH, token, json={**METER, "domain": "other.example"})
    assert other_domain.status_code == 201
    assert len(emulator.meters) == 2


@pytest.mark.parametrize("field", ["domain", "externalRef", "meterTypeId", "userId"])
@pytest.mark.parametrize("bad", [None, "", 7])
def test_create_validates_each_field(
    http: requests.Session, emulator: UsageEngineEmulator, token: str, field: str, bad: object
) -> None:
    body = {**METER, field: bad} if bad is not None else {k: v for k, v in METER.items() if k != field}
    response = api(http, emulator, "POST", METERS_PATH, token, json=body)

    assert response.status_code == 400
    assert field in response.json()["error"]
    assert emulator.meters == []


def test_create_rejects_unknown_meter_type(http: requests.Session, emulator: UsageEngineEmulator, token: str) -> None:
    response = api(http, emulator, "POST", METERS_PATH, token, json={**METER, "meterTypeId": "nope"})

    assert response.status_code == 400
    assert "meterTypeId" in response.json()["error"]


@pytest.mark.parametrize(
    "body",
    [{"value": "12"}, {"value": True}, {"resetAt": 5}, {"id": "x"}, {}, [1], {"value": 1, "userId": "u"}],
)
def test_patch_rejects_anything_but_value_and_reset_at(
    http: requests.Session, emulator: UsageEngineEmulator, token: str, body: object
) -> None:
    meter = api(http, emulator, "POST", METERS_PATH, token, json=METER).json()

    response = api(http, emulator, "PATCH", f"{METERS_PATH}/{meter['id']}", token, json=body)

    assert response.status_code == 400
    assert emulator.meters == [meter]


def test_meter_types_are_preloaded(http: requests.Session, emulator: UsageEngineEmulator, token: str) -> None:
    response = api(http, emulator, "GET", METER_TYPES_PATH, token)

    assert response.status_code == 200
    assert [t["id"] for t in response.json()["meterTypes"]] == ["api-calls", "storage-gb"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/usage-metering/v1/nothing", 404),
        ("GET", METERS_PATH + "/", 404),
        ("GET", METERS_PATH + "/a/b", 404),
        ("GET", "/not-api", 404),
        ("PUT", METERS_PATH, 405),
        ("POST", METER_TYPES_PATH, 405),
        ("POST", METERS_PATH + "/some-id", 405),
    ],
)
def test_unknown_paths_and_methods(
    http: requests.Session, emulator: UsageEngineEmulator, token: str, method: str, path: str, status: int
) -> None:
    assert api(http, emulator, method, path, token).status_code == status


@pytest.mark.parametrize("raw", [b"{not json", b'{"value": NaN}', b"[" * 100_000])
def test_malformed_json_is_400(http: requests.Session, emulator: UsageEngineEmulator, token: str, raw: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    response = api(http, emulator, "POST", METERS_PATH, token, data=raw, headers=headers)

    assert response.status_code == 400
    assert response.json() == {"error": "malformed JSON body"}


def test_body_over_one_mib_is_413(http: requests.Session, emulator: UsageEngineEmulator, token: str) -> None:
    body = json.dumps({**METER, "padding": "x" * (1024 * 1024)})
    response = api(http, emulator, "POST", METERS_PATH, token, data=body)

    assert response.status_code == 413
    assert emulator.meters == []
    # The connection stays usable after an oversized body.
    assert api(http, emulator, "GET", METERS_PATH, token).status_code == 200


# -- API authentication --------------------------------------------------------------------------------


def assert_invalid_token(response: requests.Response) -> None:
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_token"}
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_missing_or_garbage_tokens_are_401(http: requests.Session, emulator: UsageEngineEmulator, token: str) -> None:
    assert_invalid_token(api(http, emulator, "GET", METERS_PATH, None))
    assert_invalid_token(api(http, emulator, "GET", METERS_PATH, "garbage"))
    assert_invalid_token(api(http, emulator, "GET", METERS_PATH, token[:-4] + "AAAA"))
    basic = http.get(emulator.base_url + METERS_PATH, headers={"Authorization": f"Basic {token}"}, timeout=5)
    assert_invalid_token(basic)
    assert token not in basic.text
    # Authentication comes before routing: unknown API paths do not reveal themselves.
    assert_invalid_token(api(http, emulator, "GET", "/api/does-not-exist", None))


def test_token_for_another_audience_is_401(
    http: requests.Session, emulator: UsageEngineEmulator, clock: FakeClock
) -> None:
    with UsageEngineEmulator(clients={CLIENT_ID: CLIENT_SECRET}, clock=clock) as other:
        foreign = request_token(http, other).json()["access_token"]
    assert_invalid_token(api(http, emulator, "GET", METERS_PATH, foreign))


def test_expired_token_is_401(
    http: requests.Session, emulator: UsageEngineEmulator, clock: FakeClock, token: str
) -> None:
    clock.advance(3599)
    assert api(http, emulator, "GET", METERS_PATH, token).status_code == 200
    clock.advance(1)
    assert_invalid_token(api(http, emulator, "GET", METERS_PATH, token))


def test_revoked_tokens_are_401_and_new_ones_work(
    http: requests.Session, emulator: UsageEngineEmulator, token: str
) -> None:
    emulator.revoke_all_tokens()

    assert_invalid_token(api(http, emulator, "GET", METERS_PATH, token))
    fresh = request_token(http, emulator).json()["access_token"]
    assert api(http, emulator, "GET", METERS_PATH, fresh).status_code == 200


# -- fault knobs -----------------------------------------------------------------------------------------


def test_fail_next_token_requests(http: requests.Session, emulator: UsageEngineEmulator) -> None:
    emulator.fail_next_token_requests(2, 503, retry_after=7)
    emulator.fail_next_token_requests(1, 500, body=b'{"error":"boom"}')

    first, second, third, fourth = (request_token(http, emulator) for _ in range(4))
    assert (first.status_code, first.headers["Retry-After"], first.json()) == (
        503,
        "7",
        {"error": "server_error"},
    )
    assert second.status_code == 503
    assert (third.status_code, third.json()) == (500, {"error": "boom"})
    assert "Retry-After" not in third.headers
    assert fourth.status_code == 200
    assert emulator.token_requests == 4
    assert len(emulator.issued_tokens) == 1


def test_garble_next_token_responses(http: requests.Session, emulator: UsageEngineEmulator) -> None:
    emulator.garble_next_token_responses(1)
    emulator.garble_next_token_responses(1, b"not json either", status=502, content_type="text/plain")

    garbled = request_token(http, emulator)
    assert garbled.status_code == 200
    assert garbled.headers["Content-Type"] == "text/html"
    assert garbled.content == b"<html>upstream error</html>"
    bad_gateway = request_token(http, emulator)
    assert (bad_gateway.status_code, bad_gateway.content) == (502, b"not json either")
    assert request_token(http, emulator).status_code == 200
    assert len(emulator.issued_tokens) == 1


def test_transform_next_token_responses(
    http: requests.Session, emulator: UsageEngineEmulator, issued: list[str]
) -> None:
    def drop_expiry(body: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in body.items() if key != "expires_in"}

    emulator.transform_next_token_responses(1, drop_expiry)
    emulator.transform_next_token_responses(1, lambda body: {**body, "token_type": "mac"})

    # A failed request does not use up a transform.
    assert request_token(http, emulator, client_secret="wrong").status_code == 401
    first = request_token(http, emulator).json()
    second = request_token(http, emulator).json()
    third = request_token(http, emulator).json()
    assert "expires_in" not in first
    assert second["token_type"] == "mac"
    assert third["token_type"] == "Bearer"
    assert third["expires_in"] == 3600
    assert issued == emulator.issued_tokens == [first["access_token"], second["access_token"], third["access_token"]]


def test_token_delay(http: requests.Session, emulator: UsageEngineEmulator) -> None:
    emulator.set_token_delay(0.3)
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.post(emulator.token_url, data={}, timeout=0.05)

    started = time.perf_counter()
    assert request_token(http, emulator).status_code == 200
    assert time.perf_counter() - started >= 0.3
    emulator.set_token_delay(0)
    started = time.perf_counter()
    assert request_token(http, emulator).status_code == 200
    assert time.perf_counter() - started < 0.3


def test_set_expires_in(http: requests.Session, emulator: UsageEngineEmulator) -> None:
    emulator.set_expires_in(60)
    body = request_token(http, emulator).json()

    assert body["expires_in"] == 60
    claims = decode(emulator, body["access_token"])
    assert claims["exp"] - claims["iat"] == 60


def test_fail_next_api_requests_comes_before_auth(
    http: requests.Session, emulator: UsageEngineEmulator, token: str
) -> None:
    emulator.fail_next_api_requests(1, 429, retry_after=3)
    emulator.fail_next_api_requests(1, 503)

    throttled = api(http, emulator, "GET", METERS_PATH, None)
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "3")
    assert throttled.json() == {"error": "injected"}
    unavailable = api(http, emulator, "GET", METERS_PATH, token)
    assert (unavailable.status_code, unavailable.json()) == (503, {"error": "injected"})
    assert "Retry-After" not in unavailable.headers
    assert api(http, emulator, "GET", METERS_PATH, token).status_code == 200


def test_api_delay(http: requests.Session, emulator: UsageEngineEmulator, token: str) -> None:
    emulator.set_api_delay(0.2)
    started = time.perf_counter()
    assert api(http, emulator, "GET", METERS_PATH, token).status_code == 200
    assert time.perf_counter() - started >= 0.2


def test_knobs_reject_nonsense(emulator: UsageEngineEmulator) -> None:
    with pytest.raises(ValueError, match="count"):
        emulator.fail_next_token_requests(-1, 500)
    with pytest.raises(ValueError, match="status"):
        emulator.fail_next_api_requests(1, 42)
    with pytest.raises(ValueError, match="delay"):
        emulator.set_api_delay(-0.1)


# -- counters, reset, lifecycle, HTTP plumbing ------------------------------------------------------------


def test_counters(http: requests.Session, emulator: UsageEngineEmulator, token: str) -> None:
    emulator.fail_next_api_requests(1, 500)
    api(http, emulator, "GET", METERS_PATH, token)
    api(http, emulator, "GET", METERS_PATH, token)
    api(http, emulator, "POST", METERS_PATH, token, json=METER)
    api(http, emulator, "POST", METERS_PATH, token, json=METER)
    api(http, emulator, "GET", METERS_PATH, None)
    http.get(emulator.base_url + "/elsewhere", timeout=5)
    request_token(http, emulator, client_secret="wrong")

    assert emulator.api_requests == 5
    assert emulator.api_status_counts == {500: 1, 200: 1, 201: 1, 409: 1, 401: 1}
    assert emulator.token_requests == 2
    assert emulator.issued_tokens == [token]
    # Inspection returns copies.
    emulator.meters[0]["value"] = 99
    emulator.issued_tokens.clear()
    assert emulator.meters[0]["value"] == 0
    assert emulator.issued_tokens == [token]


def test_reset_forgets_state_but_keeps_clients_key_and_port(
    http: requests.Session, emulator: UsageEngineEmulator, token: str
) -> None:
    base_url, key = emulator.base_url, emulator.public_key_pem
    api(http, emulator, "POST", METERS_PATH, token, json=METER)
    emulator.revoke_all_tokens()
    emulator.set_expires_in(5)
    emulator.fail_next_api_requests(3, 500)
    emulator.fail_next_token_requests(3, 500)
    for _ in range(5):
        request_token(http, emulator)  # drains the burst: 3 failures, then 2 more tokens

    emulator.reset()

    assert (emulator.token_requests, emulator.api_requests, emulator.api_status_counts) == (0, 0, {})
    assert emulator.meters == []
    assert emulator.issued_tokens == []
    assert (emulator.base_url, emulator.public_key_pem) == (base_url, key)
    assert api(http, emulator, "GET", METERS_PATH, token).status_code == 200  # revocation forgotten
    fresh = request_token(http, emulator)
    assert fresh.status_code == 200  # client kept, rate limit and token faults forgotten
    assert fresh.json()["expires_in"] == 3600
    assert emulator.token_requests == 1


def test_lifecycle(http: requests.Session) -> None:
    emu = UsageEngineEmulator()
    with pytest.raises(RuntimeError, match="not started"):
        _ = emu.base_url
    assert emu.start() is emu
    with pytest.raises(RuntimeError, match="already started"):
        emu.start()
    base_url = emu.base_url
    assert urlsplit(base_url).hostname == "127.0.0.1"
    assert emu.token_url == base_url + TOKEN_PATH
    emu.add_client(CLIENT_ID, CLIENT_SECRET)
    assert request_token(http, emu).status_code == 200  # leaves a pooled keep-alive connection behind
    emu.stop()
    emu.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        http.get(base_url + METERS_PATH, timeout=2)


def test_connections_are_kept_alive_unless_the_client_asks(emulator: UsageEngineEmulator, token: str) -> None:
    port = urlsplit(emulator.base_url).port
    connection = HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        auth = {"Authorization": f"Bearer {token}"}
        connection.request("GET", METERS_PATH, headers=auth)
        first = connection.getresponse()
        first.read()
        sock = connection.sock
        connection.request("GET", METER_TYPES_PATH, headers=auth)
        second = connection.getresponse()
        second.read()
        assert (first.status, second.status) == (200, 200)
        assert connection.sock is sock is not None

        connection.request("GET", METERS_PATH, headers={**auth, "Connection": "close"})
        closing = connection.getresponse()
        closing.read()
        assert closing.getheader("Connection") == "close"
        assert connection.sock is None
    finally:
        connection.close()


def test_concurrent_creates_are_consistent(emulator: UsageEngineEmulator, token: str) -> None:
    statuses: list[int] = []

    def create(worker: int) -> None:
        with requests.Session() as session:
            for n in range(10):
                body = {**METER, "externalRef": f"ref-{n}"}  # every worker races for the same 10 refs
                statuses.append(api(session, emulator, "POST", METERS_PATH, token, json=body).status_code)

    threads = [threading.Thread(target=create, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [201] * 10 + [409] * 50
    assert sorted(m["externalRef"] for m in emulator.meters) == sorted(f"ref-{n}" for n in range(10))
