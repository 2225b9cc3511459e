"""CappedRetry: Retry-After honoured but capped, and a malformed one never aborts the remaining retries."""

from __future__ import annotations

import pytest

from usage_engine.retrying_http import CappedRetry, bounded_retry

CAP = CappedRetry.MAX_RETRY_AFTER_SECONDS


class _Response:
    def __init__(self, retry_after: str) -> None:
        self.headers = {"Retry-After": retry_after}


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("2", 2.0),
        ("0", 0.0),
        (str(int(CAP) + 50), CAP),  # capped
        ("1.5", 1.5),  # fractional: urllib3 alone raises InvalidHeader and gives up every retry
        ("-1", 0.0),  # negative: no wait, the ordinary backoff applies
        ("soon", 0.0),  # garbage: no hint
        ("nan", 0.0),
        ("inf", 0.0),
        ("1e9", CAP),
    ],
)
def test_retry_after_values(header: str, seconds: float) -> None:
    retry = bounded_retry(max_retries=3, methods={"GET"}, statuses={503})
    assert retry.get_retry_after(_Response(header)) == seconds  # type: ignore[arg-type]


def test_no_header_means_no_hint() -> None:
    retry = bounded_retry(max_retries=3, methods={"GET"}, statuses={503})

    response = _Response("0")
    response.headers.clear()
    assert retry.get_retry_after(response) is None  # type: ignore[arg-type]
