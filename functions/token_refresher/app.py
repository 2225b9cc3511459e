"""TokenRefresher Lambda: keep a valid Usage Engine access token in the token secret.

Invoked by the EventBridge schedule (`{"reason": "scheduled"}`) and on demand by consumers
(`{"reason": "expired"}` or `{"reason": "rejected", "token_fingerprint": ...}`). Returns
`{"refreshed", "reason", "expires_at"}`; raises when a needed refresh fails, so Lambda retries and
alarms fire.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from usage_engine import (
    RefresherSettings,
    RefreshFailedError,
    RefreshRequest,
    TokenRefresher,
    UsageEngineError,
)
from usage_engine.observability import NAMESPACE

logger = Logger(service="token-refresher")
metrics = Metrics(namespace=NAMESPACE, service="token-refresher")
tracer = Tracer(service="token-refresher")


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        settings = RefresherSettings.from_env()
        request = RefreshRequest.from_event(event)
        outcome = TokenRefresher.from_settings(settings).run(request)
    except UsageEngineError as error:
        # Configuration and request errors count as failed refreshes too: no token was made.
        cause = error.cause if isinstance(error, RefreshFailedError) else error
        metrics.add_metric(name="TokenRefreshFailed", unit=MetricUnit.Count, value=1)
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
