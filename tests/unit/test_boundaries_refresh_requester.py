"""Asking the refresher Lambda for a token, over botocore's Stubber: the exact synchronous invoke, what each
answer becomes (busy, refreshed, skipped, failures named by their type only), and the deadline's part."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError
from botocore.response import StreamingBody
from botocore.stub import Stubber

from usage_engine.aws_clients import new_lambda_client, new_session
from usage_engine.deadline import Deadline, deadline_scope
from usage_engine.errors import DeadlineExceededError, RefreshUnavailableError
from usage_engine.refresh_requester import MIN_INVOKE_SECONDS, LambdaRefreshRequester, RefreshAnswer
from usage_engine.states import RefreshReason, RefreshResult

FUNCTION = "token-refresher"
FINGERPRINT = "0123456789abcdef"


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Stubber]]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_LAMBDA", raising=False)
    client = new_lambda_client(new_session())
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


def payload(body: bytes) -> StreamingBody:
    return StreamingBody(io.BytesIO(body), len(body))


def invoke(reason: str, fingerprint: str | None = None) -> dict[str, Any]:
    sent = {"reason": reason, **({"token_fingerprint": fingerprint} if fingerprint else {})}
    return {"FunctionName": FUNCTION, "InvocationType": "RequestResponse", "Payload": json.dumps(sent).encode()}


def test_a_rejection_is_reported_with_the_tokens_fingerprint_and_the_new_one_comes_back(
    stubbed: tuple[Any, Stubber],
) -> None:
    client, stub = stubbed
    answer = json.dumps({"refreshed": True, "token_fingerprint": "fedcba9876543210"}).encode()
    stub.add_response("invoke", {"StatusCode": 200, "Payload": payload(answer)}, invoke("rejected", FINGERPRINT))
    requester = LambdaRefreshRequester(client, FUNCTION)
    assert requester.request(RefreshReason.REJECTED, FINGERPRINT) == RefreshAnswer(
        RefreshResult.REFRESHED, "fedcba9876543210"
    )
    assert requester.function_name == FUNCTION


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"refreshed": False, "token_fingerprint": FINGERPRINT}, RefreshAnswer(RefreshResult.SKIPPED, FINGERPRINT)),
        ({"refreshed": "yes", "token_fingerprint": FINGERPRINT}, RefreshAnswer(RefreshResult.SKIPPED, FINGERPRINT)),
        ({"refreshed": True, "token_fingerprint": "not-a-fingerprint"}, RefreshAnswer(RefreshResult.REFRESHED)),
        ({"refreshed": True, "token_fingerprint": 7}, RefreshAnswer(RefreshResult.REFRESHED)),
        ({"refreshed": True}, RefreshAnswer(RefreshResult.REFRESHED)),
        ([1, 2], RefreshAnswer(RefreshResult.SKIPPED)),
        (None, RefreshAnswer(RefreshResult.SKIPPED)),
    ],
)
def test_what_each_answer_means(stubbed: tuple[Any, Stubber], answer: Any, expected: RefreshAnswer) -> None:
    client, stub = stubbed
    stub.add_response("invoke", {"StatusCode": 200, "Payload": payload(json.dumps(answer).encode())}, invoke("expired"))
    assert LambdaRefreshRequester(client, FUNCTION).request(RefreshReason.EXPIRED) == expected


@pytest.mark.parametrize("code", ["TooManyRequestsException", "ResourceConflictException"])
def test_a_refresher_already_running_is_busy(stubbed: tuple[Any, Stubber], code: str) -> None:
    client, stub = stubbed
    stub.add_client_error("invoke", code, http_status_code=429)
    assert LambdaRefreshRequester(client, FUNCTION).request(RefreshReason.EXPIRED) == RefreshAnswer(RefreshResult.BUSY)


@pytest.mark.parametrize("code", ["AccessDeniedException", "ResourceNotFoundException", "ServiceException"])
def test_other_invoke_errors_are_unavailable_and_named(stubbed: tuple[Any, Stubber], code: str) -> None:
    client, stub = stubbed
    stub.add_client_error("invoke", code)
    with pytest.raises(RefreshUnavailableError) as caught:
        LambdaRefreshRequester(client, FUNCTION).request(RefreshReason.EXPIRED)
    assert str(caught.value) == f"invoking the token refresher failed: {code}"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b'{"errorType": "RefreshFailedError", "errorMessage": "x"}', "RefreshFailedError"),
        (b'{"errorType": "not an identifier"}', "unknown error"),
        (b"garbage", "unknown error"),
    ],
)
def test_a_function_error_is_named_by_its_type_only(stubbed: tuple[Any, Stubber], body: bytes, named: str) -> None:
    client, stub = stubbed
    stub.add_response("invoke", {"StatusCode": 200, "FunctionError": "Unhandled", "Payload": payload(body)})
    with pytest.raises(RefreshUnavailableError) as caught:
        LambdaRefreshRequester(client, FUNCTION).request(RefreshReason.EXPIRED)
    assert str(caught.value) == f"the token refresher failed: {named}"


def test_a_non_json_answer_is_unavailable(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    stub.add_response("invoke", {"StatusCode": 200, "Payload": payload(b"<html/>")})
    with pytest.raises(RefreshUnavailableError, match=r"^the token refresher returned a non-JSON answer$"):
        LambdaRefreshRequester(client, FUNCTION).request(RefreshReason.EXPIRED)


class Failing:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def invoke(self, **_: Any) -> Any:
        raise self.error


def test_a_read_timeout_means_the_refresh_is_still_running() -> None:
    requester = LambdaRefreshRequester(Failing(ReadTimeoutError(endpoint_url="https://lambda")), FUNCTION)  # type: ignore[arg-type]
    assert requester.request(RefreshReason.EXPIRED) == RefreshAnswer(RefreshResult.BUSY)


def test_a_transport_failure_is_unavailable_and_named_by_its_kind() -> None:
    requester = LambdaRefreshRequester(Failing(EndpointConnectionError(endpoint_url="https://lambda")), FUNCTION)  # type: ignore[arg-type]
    with pytest.raises(RefreshUnavailableError) as caught:
        requester.request(RefreshReason.EXPIRED)
    assert str(caught.value) == "invoking the token refresher failed: EndpointConnectionError"


class Recording:
    def __init__(self) -> None:
        self.calls = 0

    def invoke(self, **_: Any) -> Any:
        self.calls += 1
        return {"Payload": io.BytesIO(b'{"refreshed": true}')}


def test_without_the_time_an_invoke_needs_nothing_is_sent() -> None:
    full, bounded = Recording(), Recording()
    asked: list[float] = []

    def within(seconds: float) -> Any:
        asked.append(seconds)
        return bounded

    requester = LambdaRefreshRequester(full, FUNCTION, client_within=within, full_wait_seconds=56)  # type: ignore[arg-type]
    clock = lambda: 0.0  # noqa: E731
    with deadline_scope(Deadline(MIN_INVOKE_SECONDS - 0.25, clock)), pytest.raises(DeadlineExceededError) as caught:
        requester.request(RefreshReason.EXPIRED)
    assert caught.value.what == "asking the token refresher"
    with deadline_scope(Deadline(MIN_INVOKE_SECONDS, clock)):
        assert requester.request(RefreshReason.EXPIRED).result == RefreshResult.REFRESHED
    assert (full.calls, bounded.calls, asked) == (0, 1, [MIN_INVOKE_SECONDS])
    assert requester.request(RefreshReason.EXPIRED).result == RefreshResult.REFRESHED
    assert full.calls == 1
    assert LambdaRefreshRequester(full, FUNCTION).request(RefreshReason.EXPIRED).result == RefreshResult.REFRESHED  # type: ignore[arg-type]
    with deadline_scope(Deadline(1.5, clock)):
        # No bounded client to fall back on: the full one, whatever the time.
        LambdaRefreshRequester(full, FUNCTION, full_wait_seconds=56).request(RefreshReason.EXPIRED)  # type: ignore[arg-type]
    assert full.calls == 3
