"""Metrics the consumers share: Usage Engine API calls by status class, for the dashboard and alarms."""

from __future__ import annotations

from collections.abc import Mapping

from aws_lambda_powertools import single_metric
from aws_lambda_powertools.metrics import MetricUnit

NAMESPACE = "UsageEngine"


def publish_api_calls(counts: Mapping[str, int], *, service: str, namespace: str = NAMESPACE) -> None:
    """One EMF document per status class: `ApiCalls` with dimensions service and status ("2xx", "5xx"...).

    A status dimension cannot share a document with the handler's other metrics (all metrics of one
    document share its dimensions), hence single_metric.
    """
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
