"""UsageEngineClient at its edges, over a recording requests session and a fake token secret: the request it
sends, what every kind of answer becomes (statuses at the 2xx edges, error bodies with and without a usable
reason, bodies that are not JSON), the 401 path's errors, and the transport's retry policy read from the code."""

from __future__ import annotations

import json
import re
from typing import Any, cast

import pytest
import requests
from requests.adapters import HTTPAdapter

from tests.unit.test_api_client import FakeSecrets
from usage_engine import (
    AccessToken,
    AuthenticationError,
    TokenProvider,
    TokenStore,
    UsageEngineApiError,
    UsageEngineClient,
    encode_token,
)
from usage_engine.api_client import (
    CONNECT_TIMEOUT_SECONDS,
    MAX_RETRIES,
    READ_TIMEOUT_SECONDS,
    RETRY_METHODS,
    RETRY_STATUSES,
    api_session,
)
from usage_engine.deadline import Deadline
from usage_engine.errors import DeadlineExceededError
from usage_engine.recovery import BUSY_ATTEMPTS
from usage_engine.secrets_manager import SecretsManagerSecret
from usage_engine.states import RefreshResult

BASE = "https://api.example.test/base"
TOKEN = AccessToken(value="tok.one", expires_at=4_000_000_000, issued_at=1_700_000_000)


class Answer:
    def __init__(self, status: int, body: bytes = b"{}", reason: str = "Reason") -> None:
        self.status, self.body, self.reason = status, body, reason


class Session:
    """requests.Session.request as the client uses it: records each call, answers the next Answer (or raises)."""

    def __init__(self, *answers: Answer | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.closed = 0

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        self.calls.append((method, url, kwargs))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        response = requests.Response()
        response.status_code = answer.status
        response.reason = answer.reason
        response._content = answer.body
        response.url = url
        session = self

        def close() -> None:
            session.closed += 1

        response.close = close  # type: ignore[method-assign]
        return response


def client(
    session: Session, secrets: FakeSecrets | None = None, refresher: Any = None, **options: Any
) -> UsageEngineClient:
    store = secrets or FakeSecrets()
    if store.value is None:
        store.value = encode_token(TOKEN)
    tokens = TokenProvider(TokenStore(SecretsManagerSecret(store, "token")))  # type: ignore[arg-type]
    return UsageEngineClient(
        BASE + "/",
        tokens,
        session=cast(requests.Session, session),
        refresher=refresher,
        sleep=lambda _: None,
        **options,
    )


def test_a_request_carries_the_token_and_accepts_json_and_keeps_its_options() -> None:
    session = Session(Answer(200, b'{"ok": true}'))
    subject = client(session)
    assert subject.base_url == BASE
    response = subject.request("get", "/meters", params={"a": "b"}, headers={"X-Trace": "1"})
    assert response.json() == {"ok": True}
    ((method, url, options),) = session.calls
    assert (method, url) == ("GET", BASE + "/meters")
    assert options["headers"] == {"Accept": "application/json", "X-Trace": "1", "Authorization": "Bearer tok.one"}
    assert options["params"] == {"a": "b"}
    timeout = options["timeout"].clone()
    assert (timeout.connect_timeout, timeout.read_timeout) == (CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS)


def test_a_given_timeout_is_used() -> None:
    session = Session(Answer(200))
    client(session, timeout=(1.0, 2.0)).request("GET", "/m")
    timeout = session.calls[0][2]["timeout"].clone()
    assert (timeout.connect_timeout, timeout.read_timeout) == (1.0, 2.0)


@pytest.mark.parametrize("path", ["meters", "//evil.example/x", "https://evil.example/x"])
def test_only_a_path_below_the_base_url_is_sent(path: str) -> None:
    session = Session()
    message = "path must be relative to the API base URL and start with a single '/'"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        client(session).request("GET", path)
    assert session.calls == []


@pytest.mark.parametrize(("status", "ok"), [(200, True), (299, True), (300, False), (199, False), (404, False)])
def test_only_2xx_is_a_success(status: int, ok: bool) -> None:
    session = Session(Answer(status, b'{"error": "not_found"}'))
    if ok:
        assert client(session).request("DELETE", "/m/1").status_code == status
        return
    with pytest.raises(UsageEngineApiError) as caught:
        client(session).request("DELETE", "/m/1")
    assert (caught.value.method, caught.value.path, caught.value.status, caught.value.reason) == (
        "DELETE",
        "/m/1",
        status,
        "not_found",
    )
    assert session.closed == 1


@pytest.mark.parametrize(
    ("body", "reason", "expected"),
    [
        (b'{"error": "quota exceeded"}', "Too Many", "quota exceeded"),
        (b'{"message": "Meter not found"}', "Not Found", "Meter not found"),
        (b'{"errorMessage": "Task timed out"}', "Bad Gateway", "Task timed out"),
        (b'{"error": "x" }', "", "x"),
        (b'{"other": "x"}', "Not Found", "Not Found"),
        (b'{"other": "x"}', "", "error"),
        (b"<html>oops</html>", "Bad Gateway", "Bad Gateway"),
        (b"<html>oops</html>", "", "error"),
        (b'{"error": "line one\\nline two"}', "Conflict", "Conflict"),
    ],
)
def test_an_error_reason_is_a_short_sentence_from_the_body_else_the_http_phrase(
    body: bytes, reason: str, expected: str
) -> None:
    session = Session(Answer(409, body, reason))
    with pytest.raises(UsageEngineApiError) as caught:
        client(session).request("PUT", "/m/1", json={})
    assert caught.value.reason == expected


def test_a_transport_failure_names_its_kind_and_counts_as_an_error() -> None:
    session = Session(requests.exceptions.ConnectTimeout("slow"))
    subject = client(session)
    with pytest.raises(UsageEngineApiError) as caught:
        subject.request("GET", "/m")
    assert (caught.value.method, caught.value.path, caught.value.status, caught.value.reason) == (
        "GET",
        "/m",
        None,
        "connect timeout",
    )
    assert subject.drain_call_counts() == {"error": 1}


def test_calls_are_counted_by_status_class_and_drained() -> None:
    subject = client(Session(Answer(200), Answer(204), Answer(503), Answer(404)))
    subject.request("GET", "/a")
    subject.request("GET", "/b")
    for path in ("/c", "/d"):
        with pytest.raises(UsageEngineApiError):
            subject.request("GET", path)
    assert subject.drain_call_counts() == {"2xx": 2, "5xx": 1, "4xx": 1}
    assert subject.drain_call_counts() == {}


def test_get_json_reads_the_body_or_says_it_is_not_json() -> None:
    assert client(Session(Answer(200, b'{"meters": []}'))).get_json("/meters") == {"meters": []}
    with pytest.raises(UsageEngineApiError) as caught:
        client(Session(Answer(200, b"<html/>"))).get_json("/meters")
    assert (caught.value.method, caught.value.path, caught.value.status, caught.value.reason) == (
        "GET",
        "/meters",
        200,
        "the answer is not JSON",
    )


def test_get_json_passes_its_options_and_deadline_on() -> None:
    session = Session(Answer(200, b"[]"))
    subject = client(session)
    subject.get_json("/meters", params={"domain": "acme"})
    assert session.calls[0][0] == "GET"
    assert session.calls[0][2]["params"] == {"domain": "acme"}
    # The token is cached now: only the request itself needs time, and there is none.
    with pytest.raises(DeadlineExceededError) as caught:
        subject.get_json("/meters", deadline=Deadline(0.0, lambda: 0.0))
    assert caught.value.what == "GET /meters"


class Refresher:
    def __init__(self, secrets: FakeSecrets, result: RefreshResult = RefreshResult.REFRESHED) -> None:
        self.secrets = secrets
        self.result = result
        self.calls = 0

    def request(self, reason: str, token_fingerprint: str | None = None) -> RefreshResult:
        self.calls += 1
        self.secrets.value = encode_token(
            AccessToken(value="tok.two", expires_at=4_000_000_000, issued_at=1_700_000_001)
        )
        return self.result


def test_a_replacement_token_that_is_rejected_too_is_an_authentication_error() -> None:
    secrets = FakeSecrets()
    session = Session(Answer(401), Answer(401))
    with pytest.raises(AuthenticationError) as caught:
        client(session, secrets, Refresher(secrets)).request("PATCH", "/m/1", json={"value": 1})
    second = AccessToken(value="tok.two", expires_at=1, issued_at=1).fingerprint
    assert (caught.value.method, caught.value.path, caught.value.status) == ("PATCH", "/m/1", 401)
    assert caught.value.reason == f"token {second}, fresh, was rejected too"
    assert [call[2]["headers"]["Authorization"] for call in session.calls] == ["Bearer tok.one", "Bearer tok.two"]
    assert [call[2]["json"] for call in session.calls] == [{"value": 1}, {"value": 1}]
    assert session.closed == 2


def test_a_rejection_that_cannot_be_healed_is_an_authentication_error_with_the_reason() -> None:
    session = Session(Answer(401))
    # No refresher: the rejected token cannot be replaced.
    with pytest.raises(AuthenticationError) as caught:
        client(session).request("GET", "/m")
    assert (caught.value.method, caught.value.path, caught.value.status) == ("GET", "/m", 401)
    assert isinstance(caught.value.reason, str)
    assert caught.value.reason
    assert caught.value.reason != "None"


def test_the_recovery_gets_the_clients_sleep_clock_and_busy_attempts() -> None:
    slept: list[float] = []
    tokens = TokenProvider(TokenStore(SecretsManagerSecret(FakeSecrets(), "token")))  # type: ignore[arg-type]
    subject = UsageEngineClient(BASE, tokens, sleep=slept.append, clock=lambda: 7.0, busy_attempts=2)
    subject.recovery._sleep(0.5)
    assert slept == [0.5]
    assert subject.recovery._clock() == 7.0
    assert subject.recovery._busy_attempts == 2
    default = UsageEngineClient(BASE, tokens)
    assert default.recovery._busy_attempts == BUSY_ATTEMPTS


def test_the_api_session_retries_idempotent_methods_on_the_codes_statuses() -> None:
    adapter = api_session().get_adapter("https://api.example.test")
    assert isinstance(adapter, HTTPAdapter)
    retry = adapter.max_retries
    assert (retry.total, retry.status) == (MAX_RETRIES, MAX_RETRIES)
    assert retry.allowed_methods == RETRY_METHODS
    assert retry.status_forcelist == frozenset(RETRY_STATUSES)
    assert adapter._pool_maxsize == 16  # type: ignore[attr-defined]
    assert api_session(pool_maxsize=2).get_adapter("https://x")._pool_maxsize == 2  # type: ignore[attr-defined]


def test_json_of_an_error_body_is_never_echoed_when_it_is_not_a_sentence() -> None:
    body = json.dumps({"error": "x" * 1000}).encode()
    with pytest.raises(UsageEngineApiError) as caught:
        client(Session(Answer(500, body, "Server Error"))).request("GET", "/m")
    assert caught.value.reason == "Server Error"
