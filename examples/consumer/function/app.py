"""Example consumer in a stack of its own: counts a user's Usage Engine meters with the bundle's layer and token.

Event: {"userId": "user-42"}. Answer: {"userId": "user-42", "meterCount": 2}, or {"error": {"code", "message"}}
with a fixed message per code (never an exception's text, never a token). Everything it needs comes from the
bundle stack: the usage_engine layer, the token secret, the refresher and the API URL (environment variables
set by examples/consumer/template.yaml), and the permissions (the bundle's consumer managed policy).
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from usage_engine import (
    AuthenticationError,
    ConfigurationError,
    Deadline,
    DeadlineExceededError,
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
from usage_engine.identifiers import USER_ID, InvalidIdentifierError, check_identifier

# The template's POWERTOOLS_SERVICE_NAME and POWERTOOLS_METRICS_NAMESPACE name this function's logs and metrics.
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "example-consumer"
logger = Logger(service=SERVICE)
# The layer's own log lines (token healed, refresher asked, hold-off) in this logger's JSON.
structured_layer_logs(logger)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "UsageEngineExample", service=SERVICE)

# Kept back from the function's timeout for mapping an error, flushing metrics and returning the answer.
ANSWER_MARGIN_SECONDS = 1.0

Answer = dict[str, Any]


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics
def lambda_handler(event: Any, context: LambdaContext) -> Answer:
    given = event.get("userId") if isinstance(event, dict) else None
    user_id = given if isinstance(given, str) else ""
    try:
        check_identifier(USER_ID, user_id)
        with deadline_scope(Deadline.from_context(context, margin_seconds=ANSWER_MARGIN_SECONDS)):
            meters = count_meters(user_id)
    except UsageEngineError as error:
        return _error_answer(error)
    metrics.add_metric(name="MetersCounted", unit=MetricUnit.Count, value=meters)
    return {"userId": user_id, "meterCount": meters}


def count_meters(user_id: str) -> int:
    client = components().client_from_env()
    try:
        return len(UsageMeteringApi(client).list_meters(userId=user_id))
    finally:
        # ApiCalls by status class, also for a call that failed: that is when the counts matter.
        publish_api_calls(client, service=SERVICE, namespace=metrics.namespace)


# Most specific first: AuthenticationError is a UsageEngineApiError, RefreshHoldOffError a TokenUnavailableError.
_ERRORS: tuple[tuple[type[UsageEngineError], str, str], ...] = (
    (InvalidIdentifierError, "invalid_request", "the event needs a userId of 1-128 letters, digits and . _ @ : + -"),
    (DeadlineExceededError, "upstream_timeout", "the Usage Engine did not answer in the time this function has"),
    (AuthenticationError, "upstream_authentication", "the Usage Engine rejected the bundle's credentials"),
    (UsageEngineApiError, "upstream_error", "the Usage Engine API failed or did not answer"),
    (TokenUnavailableError, "token_unavailable", "no valid Usage Engine token right now; retry shortly"),
    (SecretStoreError, "token_store_unavailable", "the bundle's token secret cannot be read"),
    (ConfigurationError, "misconfigured", "the function's environment does not name a usable bundle"),
)


def _error_answer(error: UsageEngineError) -> Answer:
    code, message = next(
        ((code, message) for kind, code, message in _ERRORS if isinstance(error, kind)),
        ("internal_error", "the meters could not be counted"),
    )
    # The layer's error texts name variables, statuses and fingerprints, never a token or a secret.
    logger.warning("Meter count failed", extra={"code": code, "error_type": type(error).__name__, "error": str(error)})
    metrics.add_metric(name="MeterCountErrors", unit=MetricUnit.Count, value=1)
    return {"error": {"code": code, "message": message}}
