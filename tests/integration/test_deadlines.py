"""Handlers answer before their timeout, whatever the Usage Engine does: the deadline from Lambda's context
bounds every wait (connect, read, retries). Real parts: moto's server, the emulator, handlers invoked as
Lambda invokes them. The emulator parks requests (it never answers them) instead of sleeping, so the only
clock that matters is the invocation's own."""

from __future__ import annotations

import json
from typing import Any

from local.lambda_runtime import LocalLambdaContext, invoke, load_event
from local.stack import timeout_of
from tests.conftest import Deployment
from usage_engine.deadline import DEFAULT_SAFETY_MARGIN_SECONDS


def refresh_now() -> None:
    invoke("token_refresher", load_event("refresher-scheduled.json"))


def query(context: LocalLambdaContext | None = None) -> tuple[dict[str, Any], int]:
    context = context or LocalLambdaContext(function_name="meter_query", timeout_seconds=timeout_of("meter_query"))
    result = dict(invoke("meter_query", load_event("meter-query-http-api.json"), context=context))
    return result, context.get_remaining_time_in_millis()


def test_a_silent_api_is_a_504_before_the_function_times_out(deployment: Deployment) -> None:
    refresh_now()
    hold = deployment.emulator.hold_next_api_requests()
    try:
        context = LocalLambdaContext(function_name="meter_query", timeout_seconds=DEFAULT_SAFETY_MARGIN_SECONDS + 2)
        result, left_ms = query(context)
    finally:
        hold.release()
    assert result["statusCode"] == 504
    assert json.loads(result["body"])["error"]["code"] in {"upstream_unreachable", "upstream_timeout"}
    assert left_ms > 0  # answered with time to spare, not killed at the timeout
    # One attempt: a retry would have started past the deadline.
    assert hold.parked == 1


def test_no_time_left_at_all_is_a_504_without_any_request(deployment: Deployment) -> None:
    refresh_now()
    requests_before = deployment.emulator.api_requests
    context = LocalLambdaContext(function_name="meter_query", timeout_seconds=DEFAULT_SAFETY_MARGIN_SECONDS / 2)
    result, _ = query(context)
    assert result["statusCode"] == 504
    assert json.loads(result["body"])["error"]["code"] == "upstream_timeout"
    assert deployment.emulator.api_requests == requests_before
