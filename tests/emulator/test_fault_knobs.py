"""The emulator's fault knobs: injected failures, garbage, transforms, delays and holds."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from local.usage_engine_emulator import METERS_PATH, UsageEngineEmulator
from tests.emulator.support import METER, PARKED_TIMEOUT, api, decode, request_token


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


def test_token_delay_waits_before_answering(
    http: requests.Session, emulator: UsageEngineEmulator, sleeps: list[float]
) -> None:
    # The shared emulator's sleep records instead of waiting: what the knob does, not how long it took.
    emulator.set_token_delay(0.3)
    assert request_token(http, emulator).status_code == 200
    assert sleeps == [0.3]
    emulator.set_token_delay(0)
    assert request_token(http, emulator).status_code == 200
    assert sleeps == [0.3]


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


def test_api_delay(http: requests.Session, emulator: UsageEngineEmulator, token: str, sleeps: list[float]) -> None:
    emulator.set_api_delay(0.2)
    assert api(http, emulator, "GET", METERS_PATH, token).status_code == 200
    assert sleeps == [0.2]
    emulator.clear_api_faults()
    assert api(http, emulator, "GET", METERS_PATH, token).status_code == 200
    assert sleeps == [0.2]


def test_knobs_reject_nonsense(emulator: UsageEngineEmulator) -> None:
    with pytest.raises(ValueError, match="count"):
        emulator.fail_next_token_requests(-1, 500)
    with pytest.raises(ValueError, match="status"):
        emulator.fail_next_api_requests(1, 42)
    with pytest.raises(ValueError, match="delay"):
        emulator.set_api_delay(-0.1)
    with pytest.raises(ValueError, match="count"):
        emulator.hold_next_api_requests(-1)


# -- holds: requests parked until the test lets them go ------------------------------------------------------


def test_a_held_token_request_trips_the_client_timeout_and_goes_on_only_when_released(
    http: requests.Session, emulator: UsageEngineEmulator, issued: list[str]
) -> None:
    hold = emulator.hold_next_token_requests(1)

    with pytest.raises(requests.exceptions.ReadTimeout):
        request_token(http, emulator, timeout=PARKED_TIMEOUT)
    hold.wait_parked()
    assert (emulator.token_requests, emulator.issued_tokens) == (1, [])
    # Only the next request was held.
    assert request_token(http, emulator).status_code == 200
    assert hold.parked == 1

    hold.release()
    hold.wait_finished()
    # The parked request went on after its client had left, as a slow server's would.
    assert len(emulator.issued_tokens) == 2
    assert issued == emulator.issued_tokens


def test_a_held_create_is_applied_only_when_released(
    http: requests.Session, emulator: UsageEngineEmulator, token: str
) -> None:
    hold = emulator.hold_next_api_requests(method="POST")

    with pytest.raises(requests.exceptions.ReadTimeout):
        api(http, emulator, "POST", METERS_PATH, token, json=METER, timeout=PARKED_TIMEOUT)
    hold.wait_parked()
    # Other methods pass; the create has not happened yet.
    assert api(http, emulator, "GET", METERS_PATH, token).json() == {"meters": []}
    assert emulator.api_requests == 2

    hold.release()
    hold.wait_finished()
    assert [meter["externalRef"] for meter in emulator.meters] == ["ext-1"]
    assert emulator.api_status_counts == {200: 1, 201: 1}
    assert hold.finished == 1


def test_waiting_for_a_request_that_never_comes_fails_instead_of_hanging(emulator: UsageEngineEmulator) -> None:
    hold = emulator.hold_next_token_requests(1)
    with pytest.raises(TimeoutError, match="1 request"):
        hold.wait_parked(timeout=0)
    hold.release()


def test_reset_forgets_holds_no_request_has_claimed(http: requests.Session, emulator: UsageEngineEmulator) -> None:
    emulator.hold_next_token_requests()
    emulator.hold_next_api_requests()
    emulator.reset()

    token = request_token(http, emulator)
    assert token.status_code == 200
    assert api(http, emulator, "GET", METERS_PATH, token.json()["access_token"]).status_code == 200
