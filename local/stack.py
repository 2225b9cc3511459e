"""The bundle's stack as it runs on this machine: the names its resources get here, and each function's
environment as template.yaml defines it, pointed at the local emulators.

One source for the local names: the demo, the tests, the simulation and the benchmarks import them from here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from local.template import REGION, Evaluator, function_environment, load_template

__all__ = [
    "CREDENTIALS_SECRET",
    "DEAD_LETTER_QUEUE",
    "EVENT_BUS",
    "FUNCTION_IDS",
    "METER_EVENTS_QUEUE",
    "METER_STATE_TABLE",
    "REFRESHER_FUNCTION",
    "REGION",
    "TOKEN_SECRET",
    "LocalEndpoints",
    "environment_of",
    "shared_environment",
    "timeout_of",
]

CREDENTIALS_SECRET = "usage-engine/credentials"
TOKEN_SECRET = "usage-engine/token"
EVENT_BUS = "usage-engine-events"
METER_EVENTS_QUEUE = "meter-events"
DEAD_LETTER_QUEUE = "meter-events-dlq"
METER_STATE_TABLE = "meter-state"
# The refresher's function name, as consumers name it in TOKEN_REFRESHER_FUNCTION.
REFRESHER_FUNCTION = "token-refresher"

# Function folder (functions/<name>, the local Lambda runtime's name) -> the template's logical ID.
FUNCTION_IDS = {
    "token_refresher": "TokenRefresherFunction",
    "meter_events": "MeterEventsFunction",
    "meter_query": "MeterQueryFunction",
}


@dataclass(frozen=True)
class LocalEndpoints:
    """Where the local stack's peers listen."""

    token_url: str
    audience: str
    api_url: str
    dead_letter_queue_url: str = ""


def timeout_of(function: str) -> float:
    """The function's Timeout in template.yaml (Globals, then its own), in seconds."""
    template = cached_template()
    own = template["Resources"][FUNCTION_IDS[function]]["Properties"].get("Timeout")
    value = own if own is not None else template.get("Globals", {}).get("Function", {}).get("Timeout", 3)
    return float(value)


@functools.cache
def cached_template() -> dict[str, Any]:
    """template.yaml, parsed once per process (callers must not modify it)."""
    return load_template()


def environment_of(
    function: str,
    endpoints: LocalEndpoints,
    *,
    parameters: Mapping[str, str] | None = None,
    template: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The environment template.yaml gives `function` (e.g. "meter_events"), with its resources' local names
    and the emulators' URLs in place of the Usage Engine's, plus POWERTOOLS_TRACE_DISABLED (no X-Ray here)."""
    template = template or cached_template()
    values = {
        # The template's URL overrides are how a deployment points at another Usage Engine; here, the emulator.
        "UsageEngineTokenUrl": endpoints.token_url,
        "UsageEngineAudience": endpoints.audience,
        "UsageEngineApiUrl": endpoints.api_url,
        **(parameters or {}),
    }
    resources = {
        "CredentialsSecret": CREDENTIALS_SECRET,
        "TokenSecret": TOKEN_SECRET,
        "TokenRefresherFunction": REFRESHER_FUNCTION,
        "MeterEventsDeadLetterQueue": endpoints.dead_letter_queue_url,
        "MeterStateTable": METER_STATE_TABLE,
    }
    evaluator = Evaluator(template, values, resources=resources, region=REGION)
    environment = function_environment(template, FUNCTION_IDS[function], evaluator)
    environment["POWERTOOLS_TRACE_DISABLED"] = "true"
    return environment


def shared_environment(endpoints: LocalEndpoints, *, parameters: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every function's environment in one (in-process runs share one os.environ): the template gives the
    same value to a variable wherever it sets it, except each function's own service name, left out here."""
    template = cached_template()
    merged: dict[str, str] = {}
    for function in FUNCTION_IDS:
        for name, value in environment_of(function, endpoints, parameters=parameters, template=template).items():
            if name == "POWERTOOLS_SERVICE_NAME":
                continue
            if merged.setdefault(name, value) != value:
                raise ValueError(f"template.yaml gives {name} different values to different functions")
    return merged
