"""The IdP exchange (`ClientCredentialsExchange.fetch`) in the fast tier: against the Usage Engine emulator on
loopback with the production retry policy (its backoff set to 0, so nothing waits), and over a recording
session where the request itself is the subject. Every retryable status is sent to the token endpoint; limits
and timeouts are read from the code."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.timeout import Timeout

from local.usage_engine_emulator import UsageEngineEmulator
from usage_engine import TokenResponseError, parse_token_response
from usage_engine import idp as idp_module
from usage_engine.credentials import ClientCredentials
from usage_engine.deadline import Deadline, deadline_scope
from usage_engine.errors import DeadlineExceededError, IdpRejectedError, IdpUnavailableError
from usage_engine.idp import (
    CONNECT_TIMEOUT_SECONDS,
    MAX_EXPIRES_IN_SECONDS,
    MAX_RESPONSE_BYTES,
    MAX_RETRIES,
    READ_TIMEOUT_SECONDS,
    RETRY_STATUSES,
    ClientCredentialsExchange,
    token_request_retry,
    token_session,
)

CLIENT = ClientCredentials(client_id="idp-unit", client_secret="idp-unit-secret-5c1b")
SENT_AT = 1_800_000_000.9


class Clock:
    def __init__(self, now: float = SENT_AT) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def idp(emulator_server: UsageEngineEmulator) -> Iterator[UsageEngineEmulator]:
    emulator_server.reset()
    emulator_server.add_client(CLIENT.client_id, CLIENT.client_secret)
    yield emulator_server
    emulator_server.reset()


def exchange(clock: Clock | None = None) -> ClientCredentialsExchange:
    """The production exchange and retry policy, without the backoff's waits."""
    return ClientCredentialsExchange(token_session(token_request_retry(backoff_factor=0)), clock=clock or Clock())


def fetch(idp: UsageEngineEmulator, subject: ClientCredentialsExchange | None = None) -> Any:
    return (subject or exchange()).fetch(CLIENT, token_url=idp.token_url, audience=idp.audience)


# --- against the emulator -----------------------------------------------------------------------------------


def test_a_token_is_issued_for_the_clients_form_and_counts_from_when_it_was_asked_for(
    idp: UsageEngineEmulator,
) -> None:
    issued = fetch(idp, exchange(Clock(SENT_AT)))
    token = issued.token
    assert issued.attempts == 1
    assert issued.latency_ms >= 0
    assert (token.issued_at, token.expires_at) == (int(SENT_AT), int(SENT_AT) + 3600)
    assert (token.audience, token.token_type) == (idp.audience, "Bearer")
    assert token.scope
    assert idp.issued_tokens == [token.value]
    assert idp.token_requests == 1


@pytest.mark.parametrize("status", RETRY_STATUSES)
def test_every_retryable_status_is_retried_then_reported_as_unavailable(idp: UsageEngineEmulator, status: int) -> None:
    idp.fail_next_token_requests(MAX_RETRIES + 1, status)
    with pytest.raises(IdpUnavailableError) as caught:
        fetch(idp)
    assert (caught.value.status, caught.value.attempts) == (status, MAX_RETRIES + 1)
    # The emulator's failure body carries an OAuth code: that code is the reason, not the HTTP phrase.
    assert caught.value.reason == "server_error"
    assert idp.token_requests == MAX_RETRIES + 1


@pytest.mark.parametrize("status", RETRY_STATUSES)
def test_a_retryable_status_followed_by_a_token_is_one_fetch(idp: UsageEngineEmulator, status: int) -> None:
    idp.fail_next_token_requests(MAX_RETRIES, status)
    issued = fetch(idp)
    assert issued.attempts == MAX_RETRIES + 1
    assert idp.issued_tokens == [issued.token.value]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 501])
def test_other_statuses_are_rejections_without_a_retry(idp: UsageEngineEmulator, status: int) -> None:
    idp.fail_next_token_requests(1, status, body=b'{"error":"invalid_client"}')
    with pytest.raises(IdpRejectedError) as caught:
        fetch(idp)
    assert not isinstance(caught.value, IdpUnavailableError)
    assert (caught.value.status, caught.value.attempts, caught.value.reason) == (status, 1, "invalid_client")
    assert idp.token_requests == 1


def test_wrong_credentials_are_rejected_with_the_idps_code(idp: UsageEngineEmulator) -> None:
    wrong = ClientCredentials(client_id=CLIENT.client_id, client_secret="not-the-secret-0")
    with pytest.raises(IdpRejectedError) as caught:
        exchange().fetch(wrong, token_url=idp.token_url, audience=idp.audience)
    assert (caught.value.status, caught.value.reason) == (401, "access_denied")


def test_a_wrong_audience_is_rejected(idp: UsageEngineEmulator) -> None:
    with pytest.raises(IdpRejectedError) as caught:
        exchange().fetch(CLIENT, token_url=idp.token_url, audience="https://elsewhere.example/")
    assert caught.value.status == 403


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"error":"Something went wrong, sorry"}', "Bad Request"),  # free text is never echoed
        (b"<html>bad</html>", "Bad Request"),
        (b'{"error_description":"x"}', "Bad Request"),
    ],
)
def test_without_an_oauth_code_the_reason_is_the_http_phrase(
    idp: UsageEngineEmulator, body: bytes, reason: str
) -> None:
    idp.fail_next_token_requests(1, 400, body=body, content_type="text/plain")
    with pytest.raises(IdpRejectedError) as caught:
        fetch(idp)
    assert caught.value.reason == reason


@pytest.mark.parametrize("expires_in", [1, MAX_EXPIRES_IN_SECONDS])
def test_the_extreme_lifetimes_the_idp_may_grant_are_accepted(idp: UsageEngineEmulator, expires_in: int) -> None:
    idp.set_expires_in(expires_in)
    token = fetch(idp).token
    assert token.expires_at - token.issued_at == expires_in


@pytest.mark.parametrize("expires_in", [0, MAX_EXPIRES_IN_SECONDS + 1])
def test_a_lifetime_just_outside_is_a_bad_token_response(idp: UsageEngineEmulator, expires_in: int) -> None:
    idp.set_expires_in(expires_in)
    with pytest.raises(TokenResponseError) as caught:
        fetch(idp)
    assert str(caught.value.reason) == f"expires_in must be between 1 and {MAX_EXPIRES_IN_SECONDS}, got {expires_in}"
    assert caught.value.status == 200


def test_a_body_at_the_cap_is_read_and_one_byte_more_is_refused(idp: UsageEngineEmulator) -> None:
    document = json.dumps({"access_token": "a.b", "token_type": "Bearer", "expires_in": 60}).encode()
    # JSON allows trailing whitespace: a valid token response of exactly the cap, then one byte over it.
    at_cap = document.ljust(MAX_RESPONSE_BYTES)
    idp.garble_next_token_responses(1, at_cap, status=200, content_type="application/json")
    assert fetch(idp).token.value == "a.b"
    idp.garble_next_token_responses(1, at_cap + b" ", status=200, content_type="application/json")
    with pytest.raises(TokenResponseError) as caught:
        fetch(idp)
    assert (caught.value.reason, caught.value.status) == (f"body exceeds {MAX_RESPONSE_BYTES} bytes", 200)
    assert caught.value.attempts == 1


def test_an_unreachable_idp_is_unavailable_after_the_hinted_attempts() -> None:
    # Port 9 on loopback (discard) refuses: nothing listens there on a test machine.
    subject = ClientCredentialsExchange(
        token_session(token_request_retry(max_retries=0)), clock=Clock(), max_attempts_hint=7
    )
    with pytest.raises(IdpUnavailableError) as caught:
        subject.fetch(CLIENT, token_url="http://127.0.0.1:9/oauth/token", audience="a")
    assert (caught.value.reason, caught.value.attempts, caught.value.status) == ("connection failed", 7, None)


def test_the_default_attempts_hint_is_the_retry_budget() -> None:
    subject = ClientCredentialsExchange(token_session(token_request_retry(max_retries=0)), clock=Clock())
    with pytest.raises(IdpUnavailableError) as caught:
        subject.fetch(CLIENT, token_url="http://127.0.0.1:9/oauth/token", audience="a")
    assert caught.value.attempts == MAX_RETRIES + 1


# --- the request itself, over a recording session -----------------------------------------------------------


class RecordingSession:
    """requests.Session.post as the exchange uses it: records the call, answers `body` with `status`."""

    def __init__(
        self, status: int = 200, body: bytes | None = None, *, fail_reading: bool = False, retried: int = 0
    ) -> None:
        self.status = status
        self.retried = retried
        self.body = (
            body
            if body is not None
            else json.dumps({"access_token": "tok.en", "token_type": "Bearer", "expires_in": 60}).encode()
        )
        self.fail_reading = fail_reading
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.closed = 0

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        self.calls.append((url, kwargs))
        response = requests.Response()
        response.status_code = self.status
        response.reason = "Teapot"
        response.url = url
        response.raw = _Raw(self.body, self.fail_reading, self.retried)
        original_close = response.close

        def close() -> None:
            self.closed += 1
            original_close()

        response.close = close  # type: ignore[method-assign]
        return response


class _Raw(io.BytesIO):
    def __init__(self, body: bytes, fail: bool, retried: int = 0) -> None:
        super().__init__(body)
        self._fail = fail
        # What urllib3's response carries: the Retry whose history lists the attempts before this one.
        self.retries = SimpleNamespace(history=(None,) * retried)

    def read(self, *args: Any, **kwargs: Any) -> bytes:
        if self._fail:
            raise requests.exceptions.ConnectionError("connection reset")
        return super().read(*args)


def recorded(session: RecordingSession, **kwargs: Any) -> ClientCredentialsExchange:
    return ClientCredentialsExchange(cast(requests.Session, session), clock=Clock(), **kwargs)


def test_the_form_headers_and_options_of_the_token_request() -> None:
    session = RecordingSession()
    recorded(session).fetch(CLIENT, token_url="https://idp.example.test/oauth/token", audience="https://aud/")
    ((url, kwargs),) = session.calls
    assert url == "https://idp.example.test/oauth/token"
    assert kwargs["data"] == {
        "client_id": CLIENT.client_id,
        "client_secret": CLIENT.client_secret,
        "grant_type": "client_credentials",
        "audience": "https://aud/",
    }
    assert kwargs["headers"] == {"Accept": "application/json"}
    # Streamed, so that the body cap applies before the body is in memory; a redirect is an answer, not followed.
    assert (kwargs["stream"], kwargs["allow_redirects"]) == (True, False)
    assert session.closed == 1


def test_the_request_uses_the_codes_timeouts_by_default() -> None:
    session = RecordingSession()
    recorded(session).fetch(CLIENT, token_url="https://idp.example.test/t", audience="a")
    timeout = session.calls[0][1]["timeout"].clone()
    assert isinstance(timeout, Timeout)
    assert (timeout.connect_timeout, timeout.read_timeout) == (CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS)


def test_a_given_timeout_is_used() -> None:
    session = RecordingSession()
    recorded(session, timeout=(1.5, 2.5)).fetch(CLIENT, token_url="https://idp.example.test/t", audience="a")
    timeout = session.calls[0][1]["timeout"].clone()
    assert (timeout.connect_timeout, timeout.read_timeout) == (1.5, 2.5)


def test_a_body_that_fails_while_read_is_unavailable_and_the_response_is_closed() -> None:
    session = RecordingSession(fail_reading=True)
    with pytest.raises(IdpUnavailableError) as caught:
        recorded(session).fetch(CLIENT, token_url="https://idp.example.test/t", audience="a")
    assert caught.value.reason == "reading the body failed: connection failed"
    assert (caught.value.status, caught.value.attempts) == (200, 1)
    assert session.closed == 1


def test_an_error_without_any_reason_is_called_error() -> None:
    session = RecordingSession(status=400, body=b"")
    session_reason = RecordingSession.post

    def post(self: RecordingSession, url: str, **kwargs: Any) -> requests.Response:
        response = session_reason(self, url, **kwargs)
        response.reason = ""
        return response

    session.post = post.__get__(session)  # type: ignore[method-assign]
    with pytest.raises(IdpRejectedError) as caught:
        recorded(session).fetch(CLIENT, token_url="https://idp.example.test/t", audience="a")
    assert caught.value.reason == "error"


@pytest.mark.parametrize(("status", "kind"), [(299, None), (300, IdpRejectedError), (199, IdpRejectedError)])
def test_only_2xx_is_a_success(status: int, kind: type[Exception] | None) -> None:
    session = RecordingSession(status=status)
    subject = recorded(session)
    if kind is None:
        issued = subject.fetch(CLIENT, token_url="https://idp.example.test/t", audience="a")
        assert issued.token.value == "tok.en"
        return
    with pytest.raises(kind) as caught:
        subject.fetch(CLIENT, token_url="https://idp.example.test/t", audience="a")
    assert caught.value.status == status  # type: ignore[attr-defined]


def test_a_success_status_other_than_200_is_carried_into_a_bad_body_error() -> None:
    session = RecordingSession(status=201, body=b"[]")
    with pytest.raises(TokenResponseError) as caught:
        recorded(session).fetch(CLIENT, token_url="https://idp.example.test/t", audience="a")
    assert caught.value.status == 201


# --- the success body's parser, at its limits -------------------------------------------------------------


def body(**changes: object) -> bytes:
    return json.dumps({"access_token": "t.k", "token_type": "Bearer", "expires_in": 60, **changes}).encode()


@pytest.mark.parametrize("expires_in", [1, MAX_EXPIRES_IN_SECONDS])
def test_expires_in_limits_are_inclusive(expires_in: int) -> None:
    token = parse_token_response(body(expires_in=expires_in), sent_at=10.5, audience="a")
    assert (token.issued_at, token.expires_at) == (10, 10 + expires_in)


@pytest.mark.parametrize("expires_in", [0, -1, MAX_EXPIRES_IN_SECONDS + 1])
def test_expires_in_outside_the_limits_is_refused(expires_in: int) -> None:
    with pytest.raises(TokenResponseError, match=f"between 1 and {MAX_EXPIRES_IN_SECONDS}, got {expires_in}$"):
        parse_token_response(body(expires_in=expires_in), sent_at=10, audience="a")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"access_token": None}, "access_token is missing or empty"),
        ({"access_token": ""}, "access_token is missing or empty"),
        ({"access_token": "a b"}, "access_token has characters a bearer token cannot have"),
        ({"token_type": None}, "token_type is not Bearer"),
        ({"token_type": "MAC"}, "token_type is not Bearer"),
        ({"expires_in": None}, "expires_in is missing or not an integer"),
        ({"expires_in": True}, "expires_in is missing or not an integer"),
        ({"scope": 1}, "scope is not a string"),
    ],
)
def test_each_bad_field_is_named(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(TokenResponseError) as caught:
        parse_token_response(body(**changes), sent_at=10, audience="a", status=203)
    assert (caught.value.reason, caught.value.status) == (reason, 203)


@pytest.mark.parametrize(("raw", "reason"), [(b"{", "body is not JSON"), (b"[1]", "body is not a JSON object")])
def test_a_body_that_is_not_an_object_says_so(raw: bytes, reason: str) -> None:
    with pytest.raises(TokenResponseError) as caught:
        parse_token_response(raw, sent_at=10, audience="a")
    assert (caught.value.reason, caught.value.status) == (reason, 200)


def test_scope_defaults_to_empty_and_is_kept_when_given() -> None:
    assert parse_token_response(body(), sent_at=10, audience="a").scope == ""
    assert parse_token_response(body(scope="read"), sent_at=10, audience="a").scope == "read"
    assert parse_token_response(body(token_type="bearer"), sent_at=10, audience="a").token_type == "Bearer"


# --- what the exchange measures, and the session it builds -------------------------------------------------


class Monotonic:
    """time.monotonic for the idp module: each call a quarter second later."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        self.now += 0.25
        return self.now


def test_latency_is_the_milliseconds_from_before_the_request_to_after_the_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(idp_module, "time", Monotonic())
    issued = recorded(RecordingSession()).fetch(CLIENT, token_url="https://idp.example.test/t", audience="a")
    assert issued.latency_ms == 250.0
    assert (issued.attempts, issued.token.audience) == (1, "a")


def test_no_time_left_for_the_token_request_sends_nothing() -> None:
    session = RecordingSession()
    with deadline_scope(Deadline.after(0)), pytest.raises(DeadlineExceededError) as caught:
        recorded(session).fetch(CLIENT, token_url="https://idp.example.test/t", audience="a")
    assert caught.value.what == "the token request"
    assert session.calls == []


def test_the_token_request_retry_policy() -> None:
    retry = token_request_retry()
    assert (retry.total, retry.connect, retry.read, retry.status) == (MAX_RETRIES,) * 4
    assert retry.allowed_methods == frozenset({"POST"})
    assert retry.status_forcelist == frozenset(RETRY_STATUSES)
    # Half a second before the second retry (urllib3 waits 0 before the first), doubling from there.
    assert retry.backoff_factor == 0.5
    assert token_request_retry(max_retries=1, backoff_factor=2.0).total == 1
    assert token_request_retry(backoff_factor=2.0).backoff_factor == 2.0


def test_the_token_session_keeps_one_connection_and_uses_the_given_retry() -> None:
    retry = token_request_retry(max_retries=1)
    for scheme in ("https://", "http://"):
        adapter = token_session(retry).get_adapter(f"{scheme}idp.example.test")
        assert isinstance(adapter, HTTPAdapter)
        assert adapter.max_retries is retry
        assert adapter._pool_maxsize == 1  # type: ignore[attr-defined]
    default = token_session().get_adapter("https://idp.example.test")
    assert isinstance(default, HTTPAdapter)
    assert default.max_retries.total == MAX_RETRIES
    assert default.max_retries.allowed_methods == frozenset({"POST"})


def test_a_body_problem_after_retries_counts_every_attempt() -> None:
    failing = RecordingSession(fail_reading=True, retried=2)
    with pytest.raises(IdpUnavailableError) as unreadable:
        recorded(failing).fetch(CLIENT, token_url="https://idp.example.test/t", audience="a")
    assert unreadable.value.attempts == 3
    oversized = RecordingSession(body=b" " * (MAX_RESPONSE_BYTES + 1), retried=1)
    with pytest.raises(TokenResponseError) as too_big:
        recorded(oversized).fetch(CLIENT, token_url="https://idp.example.test/t", audience="a")
    assert too_big.value.attempts == 2
    rejected = RecordingSession(status=401, body=b"{}", retried=3)
    with pytest.raises(IdpRejectedError) as caught:
        recorded(rejected).fetch(CLIENT, token_url="https://idp.example.test/t", audience="a")
    assert caught.value.attempts == 4
