"""Discrete-event simulation of the bundle on a virtual clock: fleets, storms and whole days, without sleeping.

The REAL layer code runs in it, wired by `usage_engine.Components` as a container wires it: `TokenProvider`,
`TokenStore`/`SecretsManagerSecret`, `decide()` through `TokenRefresher.run`, `ClientCredentialsExchange` (with
the layer's own urllib3 `Retry` policy, Retry-After cap included), `UsageEngineClient` (401 recovery, busy
back-off with jitter) and `LambdaRefreshRequester`. Fakes sit only at the AWS and HTTP boundary, where they
count calls and model latency, quotas, throttling and faults.

Modules, one job each:

* `engine`: the events, the virtual clock and its lazy time (read its docstring first);
* `latencies`: the services' latencies;
* `fakes_aws`: Secrets Manager (quotas, throttling, botocore's retries) and the refresher's Lambda function
  (reserved concurrency 1, sync and async invokes);
* `fake_http`: `requests` + urllib3 on a simulated network, retried by the layer sessions' real `Retry`;
* `fake_usage_engine`: the IdP (rate limit, outages) and the API (401 for expired or revoked tokens);
* `bundle`: the deployed bundle and its consumer containers;
* `reads`, `storm`, `fleet`, `day`: the scenarios behind benchmarks/ and tests/simulation/;
* `__main__`: `python -m local.simulation day` (`make day`).
"""

from local.simulation.bundle import (
    CREDENTIALS_SECRET,
    REFRESHER,
    SCHEDULE_INTERVAL_SECONDS,
    TOKEN_SECRET,
    Bundle,
    BundleSettings,
    Consumer,
    ConsumerFunction,
    ConsumerStats,
    TokenGaps,
)
from local.simulation.day import (
    DayResult,
    DayScenario,
    OutageCase,
    OutageReport,
    default_day_outages,
    run_day,
    run_outage_case,
)
from local.simulation.engine import EPOCH, HOUR, MINUTE, Future, Rate, Simulation, SimulationClosed
from local.simulation.fake_http import FakeHttpSession, HttpAnswer, Transport, session_retry
from local.simulation.fake_usage_engine import CLIENT_ID, CLIENT_SECRET, IssuedInfo, Outage, UsageEngineFake
from local.simulation.fakes_aws import (
    ASYNC_MAX_EVENT_AGE_SECONDS,
    ASYNC_MAX_RETRY_ATTEMPTS,
    GET_SECRET_VALUE_QUOTA,
    PUT_SECRET_VALUE_QUOTA,
    RESERVED_CONCURRENCY,
    LambdaClientFake,
    LambdaFake,
    SecretsManagerClientFake,
    SecretsManagerFake,
    total_attempts,
)
from local.simulation.fleet import FleetResult, FleetScenario, Window, run_fleet
from local.simulation.latencies import Latencies
from local.simulation.reads import READ_STRATEGIES, powertools_on_clock, reads_per_container_hour
from local.simulation.storm import StormResult, run_storm

__all__ = [
    "ASYNC_MAX_EVENT_AGE_SECONDS",
    "ASYNC_MAX_RETRY_ATTEMPTS",
    "CLIENT_ID",
    "CLIENT_SECRET",
    "CREDENTIALS_SECRET",
    "EPOCH",
    "GET_SECRET_VALUE_QUOTA",
    "HOUR",
    "MINUTE",
    "PUT_SECRET_VALUE_QUOTA",
    "READ_STRATEGIES",
    "REFRESHER",
    "RESERVED_CONCURRENCY",
    "SCHEDULE_INTERVAL_SECONDS",
    "TOKEN_SECRET",
    "Bundle",
    "BundleSettings",
    "Consumer",
    "ConsumerFunction",
    "ConsumerStats",
    "DayResult",
    "DayScenario",
    "FakeHttpSession",
    "FleetResult",
    "FleetScenario",
    "Future",
    "HttpAnswer",
    "IssuedInfo",
    "LambdaClientFake",
    "LambdaFake",
    "Latencies",
    "Outage",
    "OutageCase",
    "OutageReport",
    "Rate",
    "SecretsManagerClientFake",
    "SecretsManagerFake",
    "Simulation",
    "SimulationClosed",
    "StormResult",
    "TokenGaps",
    "Transport",
    "UsageEngineFake",
    "Window",
    "default_day_outages",
    "powertools_on_clock",
    "reads_per_container_hour",
    "run_day",
    "run_fleet",
    "run_outage_case",
    "run_storm",
    "session_retry",
    "total_attempts",
]
