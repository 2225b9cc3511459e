"""Deadline arithmetic, and the HTTP layer bounded by it (timeouts per attempt, no retry without time left)."""

from __future__ import annotations

from typing import Any

import pytest
from urllib3.exceptions import MaxRetryError, ReadTimeoutError

from usage_engine.deadline import MIN_ATTEMPT_SECONDS, Deadline, current_deadline, deadline_scope
from usage_engine.errors import DeadlineExceededError
from usage_engine.retrying_http import bounded_retry, deadline_timeout


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Context:
    def __init__(self, millis: int) -> None:
        self.millis = millis

    def get_remaining_time_in_millis(self) -> int:
        return self.millis


def test_from_context_keeps_a_margin_for_answering() -> None:
    clock = Clock()
    deadline = Deadline.from_context(Context(4000), margin_seconds=1.0, clock=clock)
    assert deadline.remaining() == pytest.approx(3.0)
    clock.now += 2.5
    assert deadline.remaining() == pytest.approx(0.5)
    clock.now += 1.0
    assert deadline.remaining() == 0.0
    assert deadline.expired()
    with pytest.raises(DeadlineExceededError, match="asking: the invocation's deadline"):
        deadline.check("asking")


def test_a_context_with_less_than_the_margin_left_is_already_expired() -> None:
    assert Deadline.from_context(Context(500), margin_seconds=1.0, clock=Clock()).expired()


def test_scopes_nest_to_the_earlier_deadline() -> None:
    clock = Clock()
    assert current_deadline().remaining() == float("inf")
    with deadline_scope(Deadline.after(5, clock=clock)):
        with deadline_scope(Deadline.after(50, clock=clock)) as inner:
            assert inner.remaining() == pytest.approx(5)
            assert current_deadline().remaining() == pytest.approx(5)
        with deadline_scope(Deadline.after(2, clock=clock)):
            assert current_deadline().remaining() == pytest.approx(2)
        assert current_deadline().remaining() == pytest.approx(5)
    assert current_deadline().remaining() == float("inf")


def test_each_attempt_gets_a_timeout_that_ends_by_the_deadline() -> None:
    clock = Clock()
    deadline = Deadline.after(4.0, clock=clock)
    timeout = deadline_timeout(3.05, 10.0, what="GET /x", deadline=deadline)
    first = timeout.clone()  # urllib3 clones the timeout for every attempt
    assert (first.connect_timeout, first.read_timeout) == (3.05, pytest.approx(4.0))
    clock.now += 3.5
    second = timeout.clone()
    assert second.connect_timeout == pytest.approx(0.5)
    assert second.read_timeout == pytest.approx(0.5)


def test_no_timeout_when_no_attempt_fits() -> None:
    clock = Clock()
    deadline = Deadline.after(MIN_ATTEMPT_SECONDS / 2, clock=clock)
    with pytest.raises(DeadlineExceededError, match="GET /x"):
        deadline_timeout(3.05, 10.0, what="GET /x", deadline=deadline)


class _Response:
    def __init__(self, status: int, retry_after: str | None = None) -> None:
        self.status = status
        self.headers = {"Retry-After": retry_after} if retry_after else {}

    def get_redirect_location(self) -> Any:
        return None


@pytest.mark.parametrize(
    ("left", "retry_after", "retries"),
    [
        (30.0, None, True),  # time for the backoff and another attempt
        (30.0, "5", True),
        (3.0, "5", False),  # the server's wait would end past the deadline: hand back the 503 now
        (0.01, None, False),
    ],
)
def test_a_status_retry_happens_only_if_the_wait_and_an_attempt_fit(
    left: float, retry_after: str | None, retries: bool
) -> None:
    clock = Clock()
    retry = bounded_retry(max_retries=3, methods={"GET"}, statuses={503})
    with deadline_scope(Deadline.after(left, clock=clock)):
        if retries:
            assert retry.increment("GET", "/x", response=_Response(503, retry_after)).total == 2  # type: ignore[arg-type]
        else:
            with pytest.raises(MaxRetryError):
                retry.increment("GET", "/x", response=_Response(503, retry_after))  # type: ignore[arg-type]


def test_an_error_retry_without_time_left_raises_the_error_itself() -> None:
    clock = Clock()
    retry = bounded_retry(max_retries=3, methods={"GET"}, statuses={503})
    error = ReadTimeoutError(None, "/x", "read timed out")  # type: ignore[arg-type]
    with deadline_scope(Deadline.after(0.01, clock=clock)), pytest.raises(MaxRetryError) as caught:
        retry.increment("GET", "/x", error=error)
    assert caught.value.reason is error
