"""Handlers answer before their timeout, whatever the Usage Engine does: the deadline from Lambda's context
bounds every wait (connect, read, retries). Real parts: moto's server, the emulator, handlers invoked as
Lambda invokes them. The emulator parks requests (it never answers them) instead of sleeping, so the only
clock that matters is the invocation's own."""

from __future__ import annotations

import json
from typing import Any

import boto3

from local.lambda_runtime import LocalLambdaContext, invoke, load_event, load_module
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


def meter_events_batch(count: int, *, receive_count: int = 1) -> dict[str, Any]:
    """An SQS batch of `count` Create Meter events, as Lambda delivers it."""
    template = load_event("meter-events-sqs.json")["Records"][0]
    records = []
    for index in range(count):
        body = {
            "detail-type": "Create Meter",
            "source": "billing.crm",
            "time": "2026-12-01T00:00:00Z",
            "detail": {"domain": "acme", "externalRef": f"ref-{index}", "meterTypeId": "api-calls", "userId": "u-1"},
        }
        record = {**template, "messageId": f"m-{index}", "body": json.dumps(body)}
        record["attributes"] = {**template["attributes"], "ApproximateReceiveCount": str(receive_count)}
        records.append(record)
    return {"Records": records}


def meter_events_budget() -> tuple[float, float]:
    module = load_module("meter_events")
    return module.ANSWER_MARGIN_SECONDS, module.RECORD_START_SECONDS


def events_context(seconds: float) -> LocalLambdaContext:
    return LocalLambdaContext(function_name="meter_events", timeout_seconds=seconds)


def test_records_are_not_started_without_time_for_them(deployment: Deployment) -> None:
    ANSWER_MARGIN_SECONDS, RECORD_START_SECONDS = meter_events_budget()  # noqa: N806

    refresh_now()
    requests_before = deployment.emulator.api_requests
    context = events_context(ANSWER_MARGIN_SECONDS + RECORD_START_SECONDS - 1)
    response = invoke("meter_events", meter_events_batch(3), context=context)
    assert response == {"batchItemFailures": [{"itemIdentifier": f"m-{i}"} for i in range(3)]}
    assert deployment.emulator.api_requests == requests_before  # none was started
    assert deployment.emulator.meters == []


def test_on_its_last_delivery_a_record_without_time_is_dead_lettered_with_the_reason(deployment: Deployment) -> None:
    ANSWER_MARGIN_SECONDS, RECORD_START_SECONDS = meter_events_budget()  # noqa: N806

    refresh_now()
    context = events_context(ANSWER_MARGIN_SECONDS + RECORD_START_SECONDS - 1)
    response = invoke("meter_events", meter_events_batch(1, receive_count=5), context=context)
    assert response == {"batchItemFailures": []}
    sqs = boto3.client("sqs")
    (message,) = sqs.receive_message(
        QueueUrl=deployment.resources.dead_letter_queue_url, MessageAttributeNames=["All"]
    )["Messages"]
    assert (
        "not started: too little of the invocation's time left on delivery 5"
        in (message["MessageAttributes"]["reason"]["StringValue"])
    )


def test_a_record_in_flight_ends_by_the_deadline_and_the_rest_are_deferred(deployment: Deployment) -> None:
    ANSWER_MARGIN_SECONDS, RECORD_START_SECONDS = meter_events_budget()  # noqa: N806

    refresh_now()
    hold = deployment.emulator.hold_next_api_requests()
    context = events_context(ANSWER_MARGIN_SECONDS + RECORD_START_SECONDS + 1)
    try:
        response = invoke("meter_events", meter_events_batch(3), context=context)
        left_ms = context.get_remaining_time_in_millis()
    finally:
        hold.release()
    # The first record was started (its lookup parked in the emulator) and cut off at the deadline; the other
    # two were not started: all three are left for SQS to redeliver, and the function answered in time.
    assert response == {"batchItemFailures": [{"itemIdentifier": f"m-{i}"} for i in range(3)]}
    assert hold.parked == 1
    assert left_ms > 0
