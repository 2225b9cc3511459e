"""401 storms: every container of a warm fleet sees its token rejected at once."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from local.simulation.bundle import Bundle, BundleSettings
from local.simulation.engine import Simulation


@dataclass
class StormResult:
    containers: int
    idp_requests: int
    secrets_reads: int
    reads_per_container: float
    refresher_invocations: int
    throttled_invokes: int
    failed_requests: int
    failures: Counter[str]
    slowest_recovery: float
    wall_seconds: float


def run_storm(
    containers: int,
    *,
    token_age_seconds: float = 600.0,
    spread_seconds: float = 1.0,
    seed: int = 7,
    settings: BundleSettings | None = None,
) -> StormResult:
    """A warm fleet; the IdP revokes every token; each container's next call comes within `spread_seconds`."""
    started = time.perf_counter()
    with Simulation(seed=seed) as sim:
        start = sim.start
        revoked_at = start + 60
        bundle = Bundle(
            sim, settings=settings or BundleSettings(schedule_offset_seconds=37.0), revocations=(revoked_at,)
        )
        bundle.store_token(age_seconds=token_age_seconds - 60)
        bundle.schedule(start + 180)
        fleet = [bundle.consumer(f"c{i}") for i in range(containers)]
        for consumer in fleet:
            sim.at(start + 10 * sim.rng.random(), consumer.invoke)
        sim.run(revoked_at)
        for consumer in fleet:
            consumer.stats.slowest_invocation = 0.0
        reads_before = bundle.secrets.gets_by["consumer"]
        idp_before = bundle.usage_engine.idp_requests.total
        runs_before = sum(bundle.refresher.runs.values())
        throttles_before = sum(bundle.refresher.throttles.values())
        for consumer in fleet:
            sim.at(revoked_at + spread_seconds * sim.rng.random(), consumer.invoke)
        sim.run(start + 180)
        failures: Counter[str] = Counter()
        for consumer in fleet:
            failures.update(consumer.stats.failures)
        reads = bundle.secrets.gets_by["consumer"] - reads_before
        result = StormResult(
            containers=containers,
            idp_requests=bundle.usage_engine.idp_requests.total - idp_before,
            secrets_reads=reads,
            reads_per_container=reads / containers,
            refresher_invocations=sum(bundle.refresher.runs.values()) - runs_before,
            throttled_invokes=sum(bundle.refresher.throttles.values()) - throttles_before,
            failed_requests=sum(failures.values()),
            failures=failures,
            slowest_recovery=max(c.stats.slowest_invocation for c in fleet),
            wall_seconds=time.perf_counter() - started,
        )
    return result
