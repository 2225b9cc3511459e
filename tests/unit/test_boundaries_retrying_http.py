"""The HTTP retry policy and the deadline at their edges: every field of the bounded Retry, the retry budget
at exactly the time a wait and an attempt need, what a failure is called, and the deadline-bound clients."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ReadTimeoutError,
    ResponseError,
)
from urllib3.util.retry import RequestHistory

from usage_engine.deadline import MIN_ATTEMPT_SECONDS, Deadline, DeadlineBoundClient, deadline_scope
from usage_engine.errors import DeadlineExceededError
from usage_engine.retrying_http import (
    CappedRetry,
    attempts_of,
    bounded_retry,
    deadline_timeout,
    describe_failure,
    retrying_session,
)


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class _Response:
    def __init__(self, status: int) -> None:
        self.status = status
        self.headers: dict[str, str] = {}

    def get_redirect_location(self) -> Any:
        return None


# --- the Retry ---------------------------------------------------------------------------------------------


def test_every_field_of_the_bounded_retry() -> None:
    retry = bounded_retry(max_retries=2, methods={"GET", "PUT"}, statuses={429, 503})
    assert isinstance(retry, CappedRetry)
    assert (retry.total, retry.connect, retry.read, retry.status) == (2, 2, 2, 2)
    # Nothing else is retried, and a redirect is an answer, not followed.
    assert (retry.other, retry.redirect) == (0, 0)
    assert retry.allowed_methods == frozenset({"GET", "PUT"})
    assert retry.status_forcelist == frozenset({429, 503})
    assert retry.backoff_factor == 0.5
    assert retry.respect_retry_after_header is True
    # The last answer is handed back after the budget, not an exception.
    assert retry.raise_on_status is False
    assert bounded_retry(max_retries=1, methods={"GET"}, statuses={503}, backoff_factor=2.0).backoff_factor == 2.0


def test_a_retry_records_what_it_retried() -> None:
    retry = bounded_retry(max_retries=3, methods={"GET"}, statuses={503})
    after = retry.increment("GET", "/x", response=_Response(503))  # type: ignore[arg-type]
    assert after.history == (RequestHistory("GET", "/x", None, 503, None),)
    assert (after.total, after.status) == (2, 2)


def test_a_retry_with_exactly_the_time_for_its_wait_and_an_attempt_goes_ahead() -> None:
    clock = Clock()
    retry = bounded_retry(max_retries=3, methods={"GET"}, statuses={503}, backoff_factor=0)
    with deadline_scope(Deadline(clock() + MIN_ATTEMPT_SECONDS, clock)):
        assert retry.increment("GET", "/x", response=_Response(503)).total == 2  # type: ignore[arg-type]
    with deadline_scope(Deadline(clock() + MIN_ATTEMPT_SECONDS - 0.001, clock)), pytest.raises(MaxRetryError):
        retry.increment("GET", "/x", response=_Response(503))  # type: ignore[arg-type]


def test_a_status_retry_without_time_left_says_so_with_the_url_and_pool() -> None:
    clock = Clock()
    retry = bounded_retry(max_retries=3, methods={"GET"}, statuses={503})
    pool = object()
    with deadline_scope(Deadline(clock(), clock)), pytest.raises(MaxRetryError) as caught:
        retry.increment("GET", "/x", response=_Response(503), _pool=pool)  # type: ignore[arg-type]
    assert (caught.value.pool, caught.value.url) == (pool, "/x")
    assert isinstance(caught.value.reason, ResponseError)
    assert str(caught.value.reason) == "no time left to retry HTTP 503"
    with deadline_scope(Deadline(clock(), clock)), pytest.raises(MaxRetryError) as no_url:
        retry.increment("GET", None, response=_Response(503))  # type: ignore[arg-type]
    assert no_url.value.url == ""


def test_a_deadline_timeout_reports_the_values_it_was_given() -> None:
    timeout = deadline_timeout(3.0, 7.0, what="GET /x", deadline=Deadline.never())
    assert (timeout.connect_timeout, timeout.read_timeout) == (3.0, 7.0)
    with pytest.raises(DeadlineExceededError, match="GET /x"):
        deadline_timeout(3.0, 7.0, what="GET /x", deadline=Deadline(0, Clock()))


# --- the session ---------------------------------------------------------------------------------------------


def test_the_session_mounts_one_adapter_for_both_schemes() -> None:
    retry = bounded_retry(max_retries=1, methods={"GET"}, statuses={503})
    session = retrying_session(retry)
    adapters = {scheme: session.get_adapter(f"{scheme}host.example") for scheme in ("https://", "http://")}
    assert adapters["https://"] is adapters["http://"]
    adapter = adapters["https://"]
    assert isinstance(adapter, HTTPAdapter)
    assert adapter.max_retries is retry
    assert adapter._pool_maxsize == 10  # type: ignore[attr-defined]
    assert retrying_session(retry, pool_maxsize=3).get_adapter("https://h")._pool_maxsize == 3  # type: ignore[attr-defined]


def test_attempts_count_the_retries_urllib3_made() -> None:
    response = requests.Response()
    assert attempts_of(response) == 1
    retry = bounded_retry(max_retries=3, methods={"GET"}, statuses={503})
    response.raw = type("Raw", (), {"retries": retry.increment("GET", "/x", response=_Response(503))})()  # type: ignore[arg-type]
    assert attempts_of(response) == 2


# --- what a failure is called --------------------------------------------------------------------------------


def wrapped(
    reason: Exception, kind: type[requests.exceptions.RequestException]
) -> requests.exceptions.RequestException:
    """What requests raises after urllib3's retries: the last cause inside a MaxRetryError."""
    return kind(MaxRetryError(None, "/x", reason))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "described"),
    [
        (wrapped(NewConnectionError(None, "refused"), requests.exceptions.ConnectionError), "connection failed"),  # type: ignore[arg-type]
        (wrapped(NewConnectionError(None, "refused"), requests.exceptions.ConnectTimeout), "connection failed"),  # type: ignore[arg-type]
        (wrapped(ConnectTimeoutError("slow"), requests.exceptions.ConnectionError), "connect timeout"),
        (requests.exceptions.ConnectTimeout("slow"), "connect timeout"),
        (wrapped(ReadTimeoutError(None, "/x", "slow"), requests.exceptions.ConnectionError), "read timeout"),  # type: ignore[arg-type]
        (requests.exceptions.ReadTimeout("slow"), "read timeout"),
        (requests.exceptions.ConnectionError("reset"), "connection failed"),
        (requests.exceptions.ConnectionError(), "connection failed"),
        (requests.exceptions.InvalidURL("no host"), "InvalidURL"),
        (requests.exceptions.TooManyRedirects(), "TooManyRedirects"),
    ],
)
def test_a_failure_is_described_by_its_kind_never_its_text(
    error: requests.exceptions.RequestException, described: str
) -> None:
    assert describe_failure(error) == described


# --- the deadline ----------------------------------------------------------------------------------------------


def test_a_deadline_with_exactly_one_attempt_left_is_not_expired() -> None:
    clock = Clock()
    assert not Deadline(clock() + MIN_ATTEMPT_SECONDS, clock).expired()
    assert Deadline(clock() + MIN_ATTEMPT_SECONDS - 0.001, clock).expired()


def test_cap_and_timeout_end_by_the_deadline() -> None:
    clock = Clock()
    deadline = Deadline(clock() + 5, clock)
    assert deadline.cap(3) == 3
    assert deadline.cap(8) == 5
    assert deadline.timeout(3.05, 10.0, what="x") == (3.05, 5)
    assert deadline.timeout(7, 2, what="x") == (5, 2)
    assert Deadline(clock() + MIN_ATTEMPT_SECONDS, clock).timeout(1, 1, what="x") == (MIN_ATTEMPT_SECONDS,) * 2
    with pytest.raises(DeadlineExceededError) as caught:
        Deadline(clock() + MIN_ATTEMPT_SECONDS - 0.001, clock).timeout(1, 1, what="GET /meters")
    assert caught.value.what == "GET /meters"


def test_of_two_equal_deadlines_the_first_is_kept() -> None:
    first, second = Deadline(10, Clock()), Deadline(10, Clock())
    assert first.earliest(second) is first
    assert second.earliest(first) is second
    assert first.earliest(None) is first


class Within:
    def __init__(self) -> None:
        self.asked: list[float] = []

    def __call__(self, seconds: float) -> str:
        self.asked.append(seconds)
        return f"client within {seconds}"


def test_a_bound_client_is_the_full_one_while_its_whole_wait_fits() -> None:
    clock = Clock()
    within = Within()
    clients = DeadlineBoundClient("full client", within, full_wait_seconds=20)
    with deadline_scope(Deadline(clock() + 20, clock)):
        assert clients.for_now("GetSecretValue") == "full client"
    with deadline_scope(Deadline(clock() + 19.5, clock)):
        assert clients.for_now("GetSecretValue") == "client within 19.5"
    assert within.asked == [19.5]
    # Without a fallback the full client is all there is.
    alone = DeadlineBoundClient("full client", full_wait_seconds=20)
    with deadline_scope(Deadline(clock() + 1, clock)):
        assert alone.for_now("GetSecretValue") == "full client"
    assert DeadlineBoundClient("full client", within).for_now("x") == "full client"
    assert clients.client == "full client"


def test_a_bound_client_needs_at_least_its_minimum_time() -> None:
    clock = Clock()
    clients = DeadlineBoundClient("full client", Within(), full_wait_seconds=20)
    with deadline_scope(Deadline(clock() + 2, clock)):
        assert clients.for_now("x", min_seconds=2) == "client within 2.0"
        with pytest.raises(DeadlineExceededError) as caught:
            clients.for_now("PutSecretValue on t", min_seconds=2.5)
    assert caught.value.what == "PutSecretValue on t"
    with deadline_scope(Deadline(clock() + MIN_ATTEMPT_SECONDS, clock)):
        assert clients.for_now("x") == f"client within {MIN_ATTEMPT_SECONDS}"


def test_an_exhausted_retry_names_the_pool_and_the_url() -> None:
    retry = bounded_retry(max_retries=0, methods={"GET"}, statuses={503})
    pool = object()
    with pytest.raises(MaxRetryError) as caught:
        retry.increment("GET", "/x", response=_Response(503), _pool=pool)  # type: ignore[arg-type]
    assert (caught.value.pool, caught.value.url) == (pool, "/x")
