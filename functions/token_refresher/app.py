"""TokenRefresher Lambda: keep a valid Usage Engine access token in the token secret.

Invoked by the EventBridge schedule (`{"reason": "scheduled"}`), on demand by consumers (`{"reason": "expired"}`
or `{"reason": "rejected", "token_fingerprint": ...}`) and by operators (`{"reason": "forced"}`). Returns
`{"refreshed", "reason", "expires_at", "token_fingerprint"}`; raises when a needed refresh fails, so Lambda
retries and alarms fire. Rejections of tokens minted for rejections, forced runs within the forced interval and
credentials the IdP has rejected are backed off (metric `TokenRefreshBackedOff`) instead of repeated.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from usage_engine import (
    CredentialsRejectedError,
    Deadline,
    DecisionReason,
    RefresherSettings,
    RefreshFailedError,
    RefreshRequest,
    UsageEngineError,
    components,
    deadline_scope,
    structured_layer_logs,
)
from usage_engine.observability import NAMESPACE
from usage_engine.tracing import handler_tracing

# Skips that stand for a request refused by a backoff or a rate limit, not for "nothing to do".
BACKED_OFF = frozenset({DecisionReason.REJECTED_WITHIN_COOLDOWN, DecisionReason.FORCED_TOO_SOON})

# The template's POWERTOOLS_SERVICE_NAME and POWERTOOLS_METRICS_NAMESPACE name this function's logs and metrics.
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "token-refresher"
logger = Logger(service=SERVICE)
# The layer's own log lines (token healed, refresher asked, hold-off) in this logger's JSON, with its fields.
structured_layer_logs(logger)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or NAMESPACE, service=SERVICE)
traced = handler_tracing(SERVICE)

# Kept back from the function's timeout for the metrics, the log line and the answer: the IdP retries and the
# secret reads and write all end by the invocation's deadline.
ANSWER_MARGIN_SECONDS = 2.0


@logger.inject_lambda_context(log_event=False)
@traced
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        settings = RefresherSettings.from_env()
        request = RefreshRequest.from_event(event)
        with deadline_scope(Deadline.from_context(context, margin_seconds=ANSWER_MARGIN_SECONDS)):
            outcome = components().refresher(settings).run(request)
    except UsageEngineError as error:
        # Configuration and request errors count as failed refreshes too: no token was made.
        cause = error.cause if isinstance(error, RefreshFailedError) else error
        metrics.add_metric(name="TokenRefreshFailed", unit=MetricUnit.Count, value=1)
        if isinstance(cause, CredentialsRejectedError):
            metrics.add_metric(name="TokenRefreshBackedOff", unit=MetricUnit.Count, value=1)
        if isinstance(error, RefreshFailedError) and error.stored_seconds_remaining is not None:
            _record_seconds_remaining(error.stored_seconds_remaining)
        logger.error(
            "Token refresh failed",
            extra={"error_type": type(cause).__name__, "error": str(error)},
        )
        raise
    _record_seconds_remaining(outcome.seconds_remaining)
    if outcome.refreshed:
        metrics.add_metric(name="TokenRefreshed", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="IdpLatency", unit=MetricUnit.Milliseconds, value=outcome.idp_latency_ms or 0)
        logger.info(
            "Token refreshed",
            extra={
                "request_reason": request.reason,
                "reason": outcome.reason,
                "token_fingerprint": outcome.token_fingerprint,
                "expires_at": outcome.expires_at,
                "idp_attempts": outcome.idp_attempts,
                "idp_latency_ms": round(outcome.idp_latency_ms or 0, 1),
            },
        )
    else:
        metrics.add_metric(name="TokenRefreshSkipped", unit=MetricUnit.Count, value=1)
        if outcome.reason in BACKED_OFF:
            metrics.add_metric(name="TokenRefreshBackedOff", unit=MetricUnit.Count, value=1)
        logger.info(
            "Token refresh skipped",
            extra={
                "request_reason": request.reason,
                "reason": outcome.reason,
                "token_fingerprint": outcome.token_fingerprint,
                "expires_at": outcome.expires_at,
                "seconds_remaining": int(outcome.seconds_remaining),
            },
        )
    return outcome.response()


def _record_seconds_remaining(seconds: float) -> None:
    # Never negative: the freshness alarm compares against a threshold, and 0 already means "expired".
    metrics.add_metric(name="TokenSecondsRemaining", unit=MetricUnit.Seconds, value=max(0, int(seconds)))
