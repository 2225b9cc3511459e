"""The emulator's counters, reset() and its generations, lifecycle and HTTP plumbing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.client import HTTPConnection
from urllib.parse import urlsplit

import pytest
import requests

from local.usage_engine_emulator import METER_TYPES_PATH, METERS_PATH, TOKEN_PATH, UsageEngineEmulator
from tests.emulator.support import CLIENT_ID, CLIENT_SECRET, METER, TIMEOUT, api, request_token


def test_counters(http: requests.Session, emulator: UsageEngineEmulator, token: str) -> None:
    emulator.fail_next_api_requests(1, 500)
    api(http, emulator, "GET", METERS_PATH, token)
    api(http, emulator, "GET", METERS_PATH, token)
    api(http, emulator, "POST", METERS_PATH, token, json=METER)
    api(http, emulator, "POST", METERS_PATH, token, json=METER)
    api(http, emulator, "GET", METERS_PATH, None)
    http.get(emulator.base_url + "/elsewhere", timeout=TIMEOUT)
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
    connection = HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
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


# -- generations: a request from before a reset() leaves the next test alone ---------------------------------


def in_background(work: Callable[[], requests.Response]) -> tuple[threading.Thread, list[requests.Response]]:
    answers: list[requests.Response] = []
    thread = threading.Thread(target=lambda: answers.append(work()), name="late-request")
    thread.start()
    return thread, answers


def test_a_token_request_parked_across_a_reset_does_not_consume_the_next_generations_fault(
    http: requests.Session, emulator: UsageEngineEmulator
) -> None:
    hold = emulator.hold_next_token_requests(1)
    with requests.Session() as late_session:
        thread, answers = in_background(lambda: request_token(late_session, emulator))
        hold.wait_parked()

        emulator.reset()  # the next test starts while the old request is still inside the emulator
        emulator.fail_next_token_requests(1, 500, body=b'{"error":"meant for the next test"}')
        hold.release()
        hold.wait_finished()
        thread.join()

    (late,) = answers
    assert (late.status_code, late.json()) == (503, {"error": "emulator_reset"})
    assert (emulator.token_requests, emulator.issued_tokens) == (0, [])
    # The fault is still there for the request it was meant for, and that one is counted.
    meant = request_token(http, emulator)
    assert (meant.status_code, meant.json()) == (500, {"error": "meant for the next test"})
    assert emulator.token_requests == 1


def test_an_api_request_parked_across_a_reset_changes_nothing_of_the_next_generation(
    http: requests.Session, emulator: UsageEngineEmulator, token: str
) -> None:
    hold = emulator.hold_next_api_requests(1, method="POST")
    with requests.Session() as late_session:
        thread, answers = in_background(lambda: api(late_session, emulator, "POST", METERS_PATH, token, json=METER))
        hold.wait_parked()

        emulator.reset()
        emulator.fail_next_api_requests(1, 503)
        hold.release()
        hold.wait_finished()
        thread.join()

    (late,) = answers
    assert (late.status_code, late.json()) == (503, {"error": "emulator_reset"})
    # No meter created, nothing counted, and the injected 503 is left for the next request.
    assert emulator.meters == []
    assert (emulator.api_requests, emulator.api_status_counts) == (0, {})
    meant = api(http, emulator, "GET", METERS_PATH, token)
    assert (meant.status_code, meant.json()) == (503, {"error": "injected"})
    assert (emulator.api_requests, emulator.api_status_counts) == (1, {503: 1})


def test_reset_counts_generations(emulator: UsageEngineEmulator) -> None:
    before = emulator.generation
    emulator.reset()
    emulator.reset()
    assert emulator.generation == before + 2


def test_stop_lets_parked_requests_go_instead_of_hanging(http: requests.Session) -> None:
    emu = UsageEngineEmulator(clients={CLIENT_ID: CLIENT_SECRET}).start()
    hold = emu.hold_next_token_requests()
    outcomes: list[object] = []

    def parked() -> None:
        # Stop closes the connection, possibly before the released request is answered: either is fine.
        with requests.Session() as session:
            try:
                outcomes.append(request_token(session, emu).status_code)
            except requests.exceptions.ConnectionError as error:
                outcomes.append(error)

    thread = threading.Thread(target=parked, name="parked-request")
    thread.start()
    hold.wait_parked()
    emu.stop()
    hold.wait_finished()
    thread.join()
    assert hold.finished == 1
    assert len(outcomes) == 1
