"""CappedRetry's backoff: urllib3's exponential base, plus up to one backoff factor of jitter, capped, computed by
the layer itself so urllib3 1.26 (no backoff_jitter/backoff_max) and 2.x sleep the same."""

from __future__ import annotations

import random

import pytest
from urllib3.exceptions import ConnectTimeoutError, ReadTimeoutError

from usage_engine.retrying_http import CappedRetry, bounded_retry

CAP = CappedRetry.MAX_BACKOFF_SECONDS
FACTOR = 0.5
LOWEST, HIGHEST = 0.0, 0.999  # random.random()'s range is [0, 1)


def after_errors(errors: int, factor: float = FACTOR) -> CappedRetry:
    """A retry whose history holds `errors` consecutive errors, as urllib3 leaves it after that many attempts."""
    retry = bounded_retry(max_retries=errors + 1, methods={"GET"}, statuses={503}, backoff_factor=factor)
    assert isinstance(retry, CappedRetry)
    for attempt in range(errors):
        # Alternate the kinds: any error without a redirect counts toward the backoff.
        error = ConnectTimeoutError("connect timed out") if attempt % 2 else ReadTimeoutError(None, "/x", "timed out")  # type: ignore[arg-type]
        retry = retry.increment("GET", "/x", error=error)
    assert len(retry.history) == errors
    return retry


def base(errors: int, factor: float = FACTOR) -> float:
    # urllib3's own formula: no wait before the first retry, then factor x 2^(n-1).
    return 0.0 if errors <= 1 else factor * 2 ** (errors - 1)


@pytest.fixture
def jitter(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """random.random() answers the values in this list, in turn (tests set them)."""
    values: list[float] = []
    monkeypatch.setattr(random, "random", lambda: values.pop(0))
    return values


@pytest.mark.parametrize("errors", [0, 1])
def test_no_wait_before_the_first_retry(errors: int, jitter: list[float]) -> None:
    retry = after_errors(errors)
    jitter.append(HIGHEST)
    assert retry.get_backoff_time() == 0.0
    assert retry.longest_backoff() == 0.0
    assert jitter == [HIGHEST], "no jitter is drawn when there is no wait"


@pytest.mark.parametrize("errors", [2, 3, 4, 5])
def test_after_n_errors_the_wait_lies_between_the_base_and_one_factor_more(errors: int, jitter: list[float]) -> None:
    retry = after_errors(errors)
    jitter.extend([LOWEST, HIGHEST])
    low, high = retry.get_backoff_time(), retry.get_backoff_time()
    assert low == min(base(errors), CAP)
    assert high == pytest.approx(min(base(errors) + HIGHEST * FACTOR, CAP))
    assert min(base(errors), CAP) <= low <= high <= min(base(errors) + FACTOR, CAP)
    assert base(errors) > 0


@pytest.mark.parametrize("errors", [2, 3, 4, 5])
def test_longest_backoff_is_the_upper_bound(errors: int, jitter: list[float]) -> None:
    retry = after_errors(errors)
    assert retry.longest_backoff() == min(base(errors) + FACTOR, CAP)
    jitter.append(HIGHEST)
    assert retry.get_backoff_time() <= retry.longest_backoff()
    assert jitter == [], "longest_backoff draws no jitter"


def test_the_jitter_never_carries_the_wait_past_the_cap(jitter: list[float]) -> None:
    # A factor whose second-retry base (2 x factor) is below the cap and base plus jitter above it.
    factor = CAP * 0.45
    retry = after_errors(2, factor=factor)
    jitter.extend([LOWEST, HIGHEST])
    assert retry.get_backoff_time() == pytest.approx(2 * factor)
    assert retry.get_backoff_time() == CAP
    assert retry.longest_backoff() == CAP


@pytest.mark.parametrize("errors", [12, 30, 60])
def test_the_cap_holds_for_many_errors(errors: int, jitter: list[float]) -> None:
    # urllib3's own ceiling (120 s by default) is far above the cap: the cap is the layer's.
    retry = after_errors(errors)
    jitter.extend([LOWEST, HIGHEST])
    assert retry.get_backoff_time() == CAP
    assert retry.get_backoff_time() == CAP
    assert retry.longest_backoff() == CAP


def test_a_factor_above_the_cap_is_capped_from_the_second_retry(jitter: list[float]) -> None:
    retry = after_errors(2, factor=CAP)
    jitter.append(LOWEST)
    assert retry.get_backoff_time() == CAP
    assert retry.longest_backoff() == CAP


def test_no_factor_means_no_wait_and_no_jitter(jitter: list[float]) -> None:
    retry = after_errors(4, factor=0.0)
    jitter.append(HIGHEST)
    assert retry.get_backoff_time() == 0.0
    assert retry.longest_backoff() == 0.0
    assert jitter == [HIGHEST]


def test_the_jitter_is_random_without_the_patch() -> None:
    # The real random.random(): every draw within the bounds (no timing, only the range).
    retry = after_errors(3)
    draws = {retry.get_backoff_time() for _ in range(200)}
    assert all(base(3) <= d < base(3) + FACTOR for d in draws)
    assert len(draws) > 1
