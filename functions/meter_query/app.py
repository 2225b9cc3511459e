"""MeterQuery Lambda: `GET /users/{userId}/meters` on an IAM-authorised HTTP API returns that user's meters.

Usage Engine errors map to HTTP statuses with a JSON error body `{"error": {"code", "message"}}`: 404 and
429 pass through, a failing Usage Engine is 502, an unreachable one (or one too slow for the function's
remaining time) 504, no usable token (or tokens rejected even when fresh) 503, a misconfigured function 500.
The function always answers before its timeout: every wait is bounded by the invocation's deadline.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from usage_engine import (
    AuthenticationError,
    Deadline,
    DeadlineExceededError,
    RefreshHoldOffError,
    SecretStoreError,
    TokenUnavailableError,
    UsageEngineApiError,
    UsageEngineError,
    UsageMeteringApi,
    components,
    deadline_scope,
    publish_api_calls,
    structured_layer_logs,
)
from usage_engine.http_api import HttpApiResponse, json_error, json_response, path_parameter, route_of
from usage_engine.observability import NAMESPACE
from usage_engine.tracing import handler_tracing

# The template's POWERTOOLS_SERVICE_NAME and POWERTOOLS_METRICS_NAMESPACE name this function's logs and metrics.
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "meter-query"
logger = Logger(service=SERVICE)
# The layer's own log lines (token healed, refresher asked, hold-off) in this logger's JSON, with its fields.
structured_layer_logs(logger)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or NAMESPACE, service=SERVICE)
traced = handler_tracing(SERVICE)

ROUTE = "GET /users/{userId}/meters"
# Kept back from the function's timeout for mapping the error, flushing metrics and returning the answer.
ANSWER_MARGIN_SECONDS = 1.0
_USER_ID = re.compile(r"[A-Za-z0-9._@:+\-]{1,128}")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False)
@traced
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> HttpApiResponse:
    metrics.add_metric(name="MeterQueries", unit=MetricUnit.Count, value=1)
    if route_of(event) != ROUTE:
        # The API sends only its one route here; anything else is a misrouted or hand-made event.
        return json_error(404, "not_found", "no such route")
    try:
        with deadline_scope(Deadline.from_context(context, margin_seconds=ANSWER_MARGIN_SECONDS)):
            return list_user_meters(path_parameter(event, "userId") or "")
    finally:
        # The client exists only once the route has used it; settings errors surface in the route.
        publish_api_calls(_drain_calls(), service=SERVICE, namespace=metrics.namespace)


def list_user_meters(user_id: str) -> HttpApiResponse:
    if not _USER_ID.fullmatch(user_id):
        return json_error(400, "invalid_user_id", "userId must be 1-128 characters of letters, digits and . _ @ : + -")
    try:
        meters = UsageMeteringApi(components().client_from_env()).list_meters(userId=user_id)
    except UsageEngineError as error:
        return _map_error(error)
    return json_response(200, {"userId": user_id, "meters": meters})


def _map_error(error: UsageEngineError) -> HttpApiResponse:
    if isinstance(error, DeadlineExceededError):
        logger.warning("Out of time", extra={"error": str(error)})
        return json_error(504, "upstream_timeout", "the Usage Engine did not answer in the time this function has")
    if isinstance(error, RefreshHoldOffError):
        logger.warning("No Usage Engine token (holding off)", extra={"error": str(error)})
        retry_after = str(max(1, math.ceil(error.retry_after_seconds)))
        return json_error(
            503, "token_unavailable", "no valid Usage Engine token right now; retry shortly", retry_after=retry_after
        )
    if isinstance(error, AuthenticationError):
        logger.error("Usage Engine rejected fresh tokens", extra={"error": str(error)})
        return json_error(503, "upstream_authentication", "the Usage Engine rejected the service's credentials")
    if isinstance(error, UsageEngineApiError):
        logger.warning("Usage Engine API error", extra={"error": str(error), "status": error.status})
        if error.status in (404, 429):
            return json_error(error.status, f"upstream_{error.status}", error.reason)
        if error.status is None:
            return json_error(504, "upstream_unreachable", "the Usage Engine API did not answer")
        return json_error(502, "upstream_error", f"the Usage Engine API answered {error.status}")
    if isinstance(error, TokenUnavailableError):
        logger.error("No Usage Engine token", extra={"error": str(error)})
        return json_error(503, "token_unavailable", "no valid Usage Engine token right now; retry shortly")
    if isinstance(error, SecretStoreError) and error.transient:
        logger.warning("Secrets Manager unavailable", extra={"error": str(error)})
        return json_error(503, "secrets_unavailable", "the token store is busy or unreachable; retry shortly")
    # Configuration and other Secrets Manager errors (access, KMS): the service is broken, not the request.
    logger.error("Meter query failed", extra={"error_type": type(error).__name__, "error": str(error)})
    return json_error(500, "internal_error", "the service is misconfigured or its secrets are unreachable")


def _drain_calls() -> dict[str, int]:
    try:
        return components().client_from_env().drain_call_counts()
    except Exception:  # noqa: BLE001 - metrics must never turn a response into an error
        return {}
