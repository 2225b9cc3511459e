"""Secrets Manager reads per container-hour: this layer's cache, a 300 s TTL cache (Powertools), no cache."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, cast

from local.simulation.bundle import TOKEN_SECRET, Bundle, BundleSettings
from local.simulation.engine import HOUR, Simulation
from usage_engine import Components

READ_STRATEGIES = ("layer", "ttl-300s", "no-cache")


def reads_per_container_hour(strategy: str, calls_per_second: float, *, hours: float = 4.0, seed: int = 3) -> float:
    """GetSecretValue calls one container makes per hour at a steady `calls_per_second` (the first hour,
    with its cold start, is left out), the refresher keeping the token fresh on its schedule.

    layer: `TokenProvider.get()`; ttl-300s: Powertools' `SecretsProvider.get()` with its default max_age
    (300 s, also the Parameters and Secrets extension's maximum TTL); no-cache: GetSecretValue every call.
    """
    if strategy not in READ_STRATEGIES:
        raise ValueError(f"strategy must be one of {READ_STRATEGIES}")
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

    with Simulation(seed=seed) as sim, powertools_on_clock(sim):
        start = sim.start
        end = start + hours * HOUR
        bundle = Bundle(sim, settings=BundleSettings(schedule_offset_seconds=37.0))
        bundle.store_token(age_seconds=600)
        bundle.schedule(end)
        client = bundle.secrets.client("consumer")
        # One consumer container, wired as a consumer function wires it.
        components = Components(clock=sim.clock, sleep=sim.elapse, secrets_manager=cast(Any, client))
        read: Callable[[], object]
        if strategy == "layer":
            read = components.provider(bundle.consumer_settings).get
        elif strategy == "ttl-300s":
            provider = SecretsProvider(boto3_client=cast(Any, client))

            def read() -> object:
                return provider.get(TOKEN_SECRET)

        else:
            read = components.secret(TOKEN_SECRET).read
        interval = 1 / calls_per_second
        warm_calls: list[int] = []
        warm_reads: list[int] = []

        def calls() -> None:
            # One long event on its own time line: it syncs (and lets the schedule run) only when it reads.
            when, warm, made = sim.now, start + HOUR, 0
            while True:
                sim.elapse(when - sim.clock())
                now = sim.clock()
                if now >= end:
                    break
                if now >= warm and not warm_reads:
                    warm_reads.append(client.calls)
                    warm_calls.append(made)
                read()
                made += 1
                when += interval
            warm_reads.append(client.calls)
            warm_calls.append(made)

        sim.at(start, calls)
        sim.run(end + 1)
    reads = warm_reads[1] - warm_reads[0]
    made = warm_calls[1] - warm_calls[0]
    # Reads per call times calls per hour: without a cache one container cannot keep up with 100 calls/s
    # (each waits for GetSecretValue), so it is normalised per call, as if more containers served the rate.
    return reads / max(made, 1) * calls_per_second * HOUR


@contextlib.contextmanager
def powertools_on_clock(sim: Simulation) -> Iterator[None]:
    """Make Powertools' parameter cache (`datetime.now()` in parameters/base.py) read the simulated clock."""
    from aws_lambda_powertools.utilities.parameters import base

    class SimulatedDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> SimulatedDatetime:
            return cls.fromtimestamp(sim.clock(), tz)

    original = base.datetime  # type: ignore[attr-defined]
    base.datetime = SimulatedDatetime  # type: ignore[attr-defined]
    try:
        yield
    finally:
        base.datetime = original  # type: ignore[attr-defined]
