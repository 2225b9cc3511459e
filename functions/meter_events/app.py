"""MeterEvents Lambda: apply "Create/Update/Delete Meter" events from SQS to the Usage Metering API.

Partial batch responses: a retryable failure (429, 5xx, timeout, no token, an Update whose Create has not been
applied yet) is reported as a batch item failure and SQS redelivers it, up to the queue's last delivery, where
it is dead-lettered with its reason; a message that can never succeed goes to the dead-letter queue at once
with its reason; nothing is dropped. Every wait ends by the invocation's deadline, and a record is not started
without enough time left for it: it is reported for retry (on its last delivery, dead-lettered with that
reason), so the function never times out with records in flight. Events of one meter apply in the order they
were published (the meter state table, see usage_engine.meter_order); redelivered creates find the existing
meter.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from usage_engine import (
    DeadLetterError,
    Deadline,
    MessageOutcome,
    MeterEventHandler,
    RetryableMessageError,
    UsageMeteringApi,
    components,
    deadline_scope,
    publish_api_calls,
    structured_layer_logs,
)
from usage_engine.meter_events import max_receive_count_from_env, sorted_records
from usage_engine.observability import NAMESPACE
from usage_engine.settings import required_setting
from usage_engine.sqs_batch import PartialBatchResponse, SqsRecord, process_records
from usage_engine.states import MessageAction
from usage_engine.tracing import handler_tracing

# The template's POWERTOOLS_SERVICE_NAME and POWERTOOLS_METRICS_NAMESPACE name this function's logs and metrics.
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "meter-events"
logger = Logger(service=SERVICE)
# The layer's own log lines (token healed, refresher asked, hold-off) in this logger's JSON, with its fields.
structured_layer_logs(logger)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or NAMESPACE, service=SERVICE)
traced = handler_tracing(SERVICE)
# Kept back from the function's timeout for the partial batch response, the metrics and the logs: a Lambda
# timeout would lose all three and redeliver records that were already applied.
ANSWER_MARGIN_SECONDS = 2.0
# A record is started only with at least this much time left: a lookup, a write and the state table's lease
# with a retry each fit (every call ends by the deadline anyway, but a record cut off half-way costs a retry).
RECORD_START_SECONDS = 5.0


@logger.inject_lambda_context(log_event=False)
@traced
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialBatchResponse:
    parts = components()
    client = parts.client_from_env()
    handler = MeterEventHandler(
        UsageMeteringApi(client),
        parts.dead_letter_queue(required_setting("DEAD_LETTER_QUEUE_URL")),
        parts.meter_state_table(required_setting("METER_STATE_TABLE")),
    )
    max_receive_count = max_receive_count_from_env()
    deadline = Deadline.from_context(context, margin_seconds=ANSWER_MARGIN_SECONDS)

    def record_handler(record: SqsRecord) -> str:
        try:
            if deadline.remaining() < RECORD_START_SECONDS:
                metrics.add_metric(name="MeterEventsDeferred", unit=MetricUnit.Count, value=1)
                outcome = handler.defer(
                    record.body,
                    record.message_id,
                    reason="not started: too little of the invocation's time left",
                    receive_count=record.receive_count,
                    max_receive_count=max_receive_count,
                )
            else:
                outcome = handler.handle_delivery(
                    record.body,
                    record.message_id,
                    receive_count=record.receive_count,
                    max_receive_count=max_receive_count,
                )
        except (RetryableMessageError, DeadLetterError) as error:
            # DeadLetterError: the record could not be parked in the dead-letter queue, so SQS keeps it.
            metrics.add_metric(name="MeterEventsRetried", unit=MetricUnit.Count, value=1)
            logger.warning("Meter event will be retried", extra={"message_id": record.message_id, "error": str(error)})
            raise
        except Exception as error:
            # Not a failure the layer knows: SQS redelivers the record; say so without the exception's text.
            metrics.add_metric(name="MeterEventsRetried", unit=MetricUnit.Count, value=1)
            logger.error(
                "Meter event failed unexpectedly and will be retried",
                extra={"message_id": record.message_id, "error_type": type(error).__name__},
            )
            raise
        _record(outcome, record.message_id)
        return outcome.action

    # Events published together are applied in their order instead of waiting for a redelivery.
    records = sorted_records(list(event.get("Records") or []))
    try:
        with deadline_scope(deadline):
            return process_records(records, record_handler)
    finally:
        publish_api_calls(client, service=SERVICE, namespace=metrics.namespace)


def _record(outcome: MessageOutcome, message_id: str) -> None:
    if outcome.dead_lettered:
        metrics.add_metric(name="MeterEventsDeadLettered", unit=MetricUnit.Count, value=1)
        logger.error("Meter event dead-lettered", extra={"message_id": message_id, "reason": outcome.reason})
        return
    if outcome.action == MessageAction.SUPERSEDED:
        # Older than what its meter already reflects: acknowledged without an API call.
        metrics.add_metric(name="MeterEventsSuperseded", unit=MetricUnit.Count, value=1)
        logger.info("Meter event superseded", extra={"message_id": message_id, "meter_id": outcome.meter_id})
        return
    metrics.add_metric(name="MeterEventsApplied", unit=MetricUnit.Count, value=1)
    logger.info(
        "Meter event applied", extra={"message_id": message_id, "action": outcome.action, "meter_id": outcome.meter_id}
    )
