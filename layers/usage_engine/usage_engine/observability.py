"""What consumers see of the layer: its logs in their Powertools Logger's format, and the ApiCalls metric."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from aws_lambda_powertools import single_metric
from aws_lambda_powertools.metrics import MetricUnit

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger

NAMESPACE = "UsageEngine"
# Every module of the layer logs under this name (logging.getLogger(__name__)).
LAYER_LOGGER = "usage_engine"


class CallCounts(Protocol):
    """What counts API calls by status class: UsageEngineClient, or anything else that drains such counts."""

    def drain_call_counts(self) -> Mapping[str, int]: ...


def structured_layer_logs(logger: Logger, *, level: int | str | None = None) -> None:
    """Render the layer's log records with `logger`'s handler and format (JSON, with each record's extra fields
    as top-level keys) at `logger`'s level, or `level`.

    Call it once per container, e.g. next to `logger = Logger(...)`; calling it again re-applies the same
    setup. The layer's loggers stop propagating to the root logger, so Lambda's own handler does not print
    each record a second time as plain text.
    """
    # Deferred: a cold start that never calls this does not import the logging utilities.
    from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

    # Powertools configures only loggers that exist: the layer's modules may not have been imported yet.
    logging.getLogger(LAYER_LOGGER)
    copy_config_to_registered_loggers(source_logger=logger, log_level=level, include={LAYER_LOGGER})


def publish_api_calls(calls: CallCounts | Mapping[str, int], *, service: str, namespace: str = NAMESPACE) -> None:
    """One EMF document per status class: `ApiCalls` with dimensions service and status ("2xx", "5xx"...).

    `calls` is the client itself (its counts since the last call are drained: `publish_api_calls(client,
    service=...)`) or counts already drained. A status dimension cannot share a document with the handler's
    other metrics (all metrics of one document share its dimensions), hence single_metric.
    """
    counts = calls if isinstance(calls, Mapping) else calls.drain_call_counts()
    for status, count in sorted(counts.items()):
        if count <= 0:
            continue
        with single_metric(
            name="ApiCalls",
            unit=MetricUnit.Count,
            value=count,
            namespace=namespace,
            default_dimensions={"service": service},
        ) as metric:
            metric.add_dimension(name="status", value=status)
