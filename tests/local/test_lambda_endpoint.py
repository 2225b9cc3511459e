"""The local Lambda Invoke endpoint, called by real boto3 and running the real refresher handler.

Everything is real on loopback: boto3's `lambda` client (pointed here by AWS_ENDPOINT_URL_LAMBDA while
Secrets Manager stays on moto via AWS_ENDPOINT_URL), the refresher handler, moto's server and the Usage
Engine emulator.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.config import Config

from local.lambda_endpoint import LocalLambdaEndpoint
from tests.conftest import CLIENT_SECRET, Deployment
from usage_engine import ClientCredentialsExchange, fingerprint, reset_components

NAME = "token-refresher"
ARN = f"arn:aws:lambda:eu-west-1:123456789012:function:{NAME}"
FUNCTIONS = {NAME: "token_refresher"}
# One request, no retry: the tests count what reaches the endpoint (see the max_attempts test below).
NO_RETRIES = {"total_max_attempts": 1, "mode": "standard"}
HANG_LIMIT_SECONDS = 120.0

Serve = Callable[..., LocalLambdaEndpoint]


@pytest.fixture
def serve(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Iterator[Serve]:
    """Start an endpoint for the refresher (optionally with reserved concurrency) and point boto3 at it."""
    with contextlib.ExitStack() as stack:

        def start(reserved: int | None = None) -> LocalLambdaEndpoint:
            limits = {} if reserved is None else {NAME: reserved}
            endpoint = stack.enter_context(LocalLambdaEndpoint(FUNCTIONS, reserved_concurrency=limits))
            for name, value in endpoint.environment().items():
                monkeypatch.setenv(name, value)
            return endpoint

        yield start


def lambda_client(retries: dict[str, Any] | None = None) -> Any:
    # A loaded machine may be slow to answer; that must never look like a timeout of the endpoint.
    config = Config(retries=retries or NO_RETRIES, connect_timeout=HANG_LIMIT_SECONDS, read_timeout=HANG_LIMIT_SECONDS)
    return boto3.client("lambda", config=config)


def invoke(client: Any, event: Any, function: str = NAME, **kwargs: Any) -> tuple[dict[str, Any], bytes]:
    response = client.invoke(FunctionName=function, Payload=json.dumps(event), **kwargs)
    return response, response["Payload"].read()


def wait_until(condition: Callable[[], bool]) -> None:
    """Wait for background work (an Event invocation) to be done. The limit only keeps a broken test from
    hanging: it is far beyond what any loaded machine needs, so it never decides a passing test."""
    deadline = time.monotonic() + HANG_LIMIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {HANG_LIMIT_SECONDS:g} s"
        time.sleep(0.02)


def test_sync_invoke_returns_the_refresher_result_and_writes_the_token(serve: Serve, deployment: Deployment) -> None:
    endpoint = serve()

    response, body = invoke(lambda_client(), {}, InvocationType="RequestResponse")

    assert response["StatusCode"] == 200
    assert response["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in response
    stored = deployment.stored_token()
    assert stored["access_token"] == deployment.emulator.issued_tokens[-1]
    assert json.loads(body) == {
        "refreshed": True,
        "reason": "missing",
        "expires_at": stored["expires_at"],
        "token_fingerprint": fingerprint(stored["access_token"]),
    }
    # Reached this endpoint although AWS_ENDPOINT_URL points every other service at moto.
    assert endpoint.invocations(NAME) == 1
    assert endpoint.throttles(NAME) == 0
    assert deployment.emulator.token_requests == 1


def test_the_consumers_rejected_report_reaches_the_handler_intact(serve: Serve, deployment: Deployment) -> None:
    # The refresher's policy is tested elsewhere; here only the payload's trip through the endpoint matters:
    # a report about a token that is no longer stored must be recognised as such (fingerprint included).
    endpoint = serve()
    client = lambda_client()
    invoke(client, {})
    stale = fingerprint("a-token-that-was-replaced-long-ago")

    response, body = invoke(client, {"reason": "rejected", "token_fingerprint": stale})

    assert "FunctionError" not in response
    result = json.loads(body)
    assert (result["refreshed"], result["reason"]) == (False, "rejected-token-already-replaced")
    assert result["expires_at"] == deployment.stored_token()["expires_at"]
    assert deployment.emulator.token_requests == 1
    assert endpoint.invocations(NAME) == 2


@pytest.mark.parametrize(
    "function",
    [ARN, f"{ARN}:$LATEST", f"{ARN}:live", f"123456789012:function:{NAME}", f"{NAME}:$LATEST"],
    ids=["arn", "arn-latest", "arn-alias", "partial-arn", "name-latest"],
)
def test_arns_and_qualified_names_resolve_to_the_function(serve: Serve, deployment: Deployment, function: str) -> None:
    endpoint = serve()
    response, body = invoke(lambda_client(), {}, function=function)
    assert response["StatusCode"] == 200
    assert json.loads(body)["reason"] == "missing"
    assert endpoint.invocations(NAME) == 1


@pytest.mark.parametrize("function", ["no-such-function", "arn:aws:lambda:eu-west-1:123456789012:function:nope"])
def test_an_unknown_function_is_resource_not_found(serve: Serve, deployment: Deployment, function: str) -> None:
    endpoint = serve()
    client = lambda_client()
    with pytest.raises(client.exceptions.ResourceNotFoundException) as caught:
        invoke(client, {}, function=function)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert "Function not found" in caught.value.response["Error"]["Message"]
    assert endpoint.invocations(NAME) == 0
    assert deployment.emulator.token_requests == 0


def test_a_failed_refresh_is_an_unhandled_function_error_without_secrets(serve: Serve, deployment: Deployment) -> None:
    endpoint = serve()
    client = lambda_client()
    invoke(client, {})
    good = deployment.stored_token()
    deployment.emulator.fail_next_token_requests(10, 400)

    response, body = invoke(client, {"reason": "forced"})

    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    error = json.loads(body)
    assert set(error) == {"errorMessage", "errorType", "requestId", "stackTrace"}
    assert error["errorType"] == "RefreshFailedError"
    assert "left untouched" in error["errorMessage"]
    assert error["stackTrace"] == []
    text = body.decode()
    assert deployment.emulator.issued_tokens, "a token was issued, so the leak check below means something"
    assert CLIENT_SECRET not in text
    for token in deployment.emulator.issued_tokens:
        assert token not in text
    assert deployment.stored_token() == good
    assert endpoint.invocations(NAME) == 2  # failures count too


def test_a_bad_request_to_the_function_is_a_function_error_too(serve: Serve, deployment: Deployment) -> None:
    serve()
    response, body = invoke(lambda_client(), {"reason": "because"})
    assert response["FunctionError"] == "Unhandled"
    assert json.loads(body)["errorType"] == "RefreshRequestError"
    assert deployment.emulator.token_requests == 0


def test_a_payload_that_is_not_json_is_rejected_before_the_handler(serve: Serve, deployment: Deployment) -> None:
    endpoint = serve()
    client = lambda_client()
    with pytest.raises(client.exceptions.InvalidRequestContentException) as caught:
        client.invoke(FunctionName=NAME, Payload=b"{not json")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert endpoint.invocations(NAME) == 0


def test_event_invocation_returns_202_and_runs_in_the_background(serve: Serve, deployment: Deployment) -> None:
    endpoint = serve()

    response, body = invoke(lambda_client(), {}, InvocationType="Event")

    assert response["StatusCode"] == 202
    assert body == b""
    wait_until(lambda: endpoint.invocations(NAME) == 1)
    assert deployment.stored_token()["access_token"] == deployment.emulator.issued_tokens[-1]


def test_dry_run_returns_204_and_runs_nothing(serve: Serve, deployment: Deployment) -> None:
    endpoint = serve()
    response, body = invoke(lambda_client(), {}, InvocationType="DryRun")
    assert response["StatusCode"] == 204
    assert body == b""
    assert endpoint.invocations(NAME) == 0
    assert deployment.emulator.token_requests == 0


def test_reserved_concurrency_throttles_sync_invokes_and_queues_events(serve: Serve, deployment: Deployment) -> None:
    endpoint = serve(reserved=1)
    client = lambda_client()
    # Timeouts far longer than the test, so the parked IdP request below is never retried, however slow
    # the machine: the slow invocation makes exactly one.
    reset_components(exchange=ClientCredentialsExchange(timeout=(HANG_LIMIT_SECONDS, HANG_LIMIT_SECONDS)))
    hold = deployment.emulator.hold_next_token_requests()

    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            slow = pool.submit(invoke, client, {"reason": "forced"})
            # The IdP has the request and holds it: the slow invocation holds the only slot until released.
            hold.wait_parked()

            with pytest.raises(client.exceptions.TooManyRequestsException) as caught:
                invoke(client, {"reason": "expired"})
            queued, _ = invoke(client, {"reason": "expired"}, InvocationType="Event")
            assert endpoint.invocations(NAME) == 0
            hold.release()
            response, body = slow.result(timeout=HANG_LIMIT_SECONDS)
    finally:
        hold.release()

    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert error["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    assert error["Error"]["Message"] == "Rate Exceeded."
    assert endpoint.throttles(NAME) == 1
    assert response["StatusCode"] == 200
    assert json.loads(body)["refreshed"] is True
    # Async invocations are never throttled to the caller: it waited for the slot, then ran.
    assert queued["StatusCode"] == 202
    wait_until(lambda: endpoint.invocations(NAME) == 2)
    assert deployment.emulator.token_requests == 1  # the queued "expired" report found a fresh token
    # The slot is free again.
    assert json.loads(invoke(client, {"reason": "expired"})[1])["reason"] == "fresh"
    assert endpoint.throttles(NAME) == 1


def test_botocore_max_attempts_counts_retries_not_requests(serve: Serve, deployment: Deployment) -> None:
    # Reserved concurrency 0 throttles every synchronous invoke, so throttles() counts the requests sent.
    endpoint = serve(reserved=0)

    one_retry = lambda_client({"max_attempts": 1, "mode": "standard"})
    with pytest.raises(one_retry.exceptions.TooManyRequestsException):
        invoke(one_retry, {})
    assert endpoint.throttles(NAME) == 2

    no_retry = lambda_client({"total_max_attempts": 1, "mode": "standard"})
    with pytest.raises(no_retry.exceptions.TooManyRequestsException):
        invoke(no_retry, {})
    assert endpoint.throttles(NAME) == 3
    assert endpoint.invocations(NAME) == 0
    assert deployment.emulator.token_requests == 0


# --- the endpoint object itself -------------------------------------------------------------------------


def test_environment_points_at_the_started_endpoint() -> None:
    endpoint = LocalLambdaEndpoint(FUNCTIONS)
    with pytest.raises(RuntimeError):
        endpoint.environment()
    with endpoint:
        assert endpoint.endpoint_url.startswith("http://127.0.0.1:")
        assert int(endpoint.endpoint_url.rsplit(":", 1)[1]) > 0
        assert endpoint.environment() == {"AWS_ENDPOINT_URL_LAMBDA": endpoint.endpoint_url}
    endpoint.stop()  # idempotent
    with pytest.raises(RuntimeError):
        endpoint.start()


@pytest.mark.parametrize(
    ("functions", "reserved", "message"),
    [
        ({NAME: "no_such_folder"}, {}, "no handler at functions/no_such_folder/app.py"),
        ({"not a name": "token_refresher"}, {}, "not a Lambda function name"),
        (FUNCTIONS, {"other-function": 1}, "functions that are not served"),
        (FUNCTIONS, {NAME: -1}, "must be >= 0"),
    ],
    ids=["missing-folder", "bad-name", "reserved-for-unknown", "negative-reserved"],
)
def test_a_misconfigured_endpoint_fails_at_construction(
    functions: dict[str, str], reserved: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        LocalLambdaEndpoint(functions, reserved_concurrency=reserved)


def test_counters_reject_names_that_are_not_served() -> None:
    with pytest.raises(KeyError):
        LocalLambdaEndpoint(FUNCTIONS).invocations("token_refresher")
