"""Opt-in X-Ray SDK tracing of a Lambda handler.

Lambda's active tracing (`Tracing: Active`) records every invocation's segment, its init and its duration
without any SDK. The X-Ray SDK adds subsegments for each AWS and HTTP call, at a price every cold start pays:
importing and patching it costs more than the rest of the layer (benchmarks/RESULTS.md, section 4), and the
SDK is in maintenance mode. So it is off unless USAGE_ENGINE_XRAY_SDK is "true", which the template sets
together with the layer that ships the SDK (parameter XRaySdkTracing).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import ConfigurationError

XRAY_SDK_SETTING = "USAGE_ENGINE_XRAY_SDK"

F = TypeVar("F", bound=Callable[..., Any])


def xray_sdk_enabled() -> bool:
    value = os.environ.get(XRAY_SDK_SETTING, "false").strip().lower()
    if value not in ("true", "false", ""):
        raise ConfigurationError(XRAY_SDK_SETTING, f"must be true or false, not {value[:20]!r}")
    return value == "true"


def handler_tracing(service: str) -> Callable[[F], F]:
    """A decorator for the handler: Powertools' Tracer (X-Ray SDK subsegments, the handler's response not
    captured) when enabled, the handler unchanged otherwise. Call it where the handler module is loaded, so
    the SDK patches botocore and requests before any client exists."""
    if not xray_sdk_enabled():
        return _unchanged
    try:
        import aws_xray_sdk  # type: ignore[import-untyped]  # noqa: F401 - checked here for a clear error instead of one at the first call
    except ImportError as error:
        raise ConfigurationError(
            XRAY_SDK_SETTING,
            "is true but the X-Ray SDK is not installed: deploy with XRaySdkTracing=Enabled (it adds the X-Ray "
            "SDK layer) or add aws-xray-sdk to the function",
        ) from error
    from aws_lambda_powertools import Tracer

    decorate: Callable[[F], F] = Tracer(service=service).capture_lambda_handler(capture_response=False)
    return decorate


def _unchanged(handler: F) -> F:
    return handler
