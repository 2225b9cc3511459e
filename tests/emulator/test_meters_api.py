"""The emulator's Usage Metering API: meters, meter types and Bearer authentication, over real HTTP."""

from __future__ import annotations

import json

import pytest
import requests

from local.usage_engine_emulator import METER_TYPES_PATH, METERS_PATH, ManualClock, UsageEngineEmulator
from tests.emulator.support import CLIENT_ID, CLIENT_SECRET, METER, TIMEOUT, api, request_token

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
    basic = http.get(emulator.base_url + METERS_PATH, headers={"Authorization": f"Basic {token}"}, timeout=TIMEOUT)
    assert_invalid_token(basic)
    assert token not in basic.text
    # Authentication comes before routing: unknown API paths do not reveal themselves.
    assert_invalid_token(api(http, emulator, "GET", "/api/does-not-exist", None))


def test_token_for_another_audience_is_401(
    http: requests.Session, emulator: UsageEngineEmulator, clock: ManualClock
) -> None:
    with UsageEngineEmulator(clients={CLIENT_ID: CLIENT_SECRET}, clock=clock) as other:
        foreign = request_token(http, other).json()["access_token"]
    assert_invalid_token(api(http, emulator, "GET", METERS_PATH, foreign))


def test_expired_token_is_401(
    http: requests.Session, emulator: UsageEngineEmulator, clock: ManualClock, token: str
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
