"""A fleet of consumer containers under a steady load: a synchronized cold-start wave, revocations, outages;
peaks per second against the Secrets Manager quota and the IdP's rate limit."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from local.simulation.bundle import Bundle, BundleSettings, Consumer, poisson_arrivals, unique_gaps
from local.simulation.engine import Simulation
from local.simulation.fake_usage_engine import Outage
from local.simulation.fakes_aws import GET_SECRET_VALUE_QUOTA
from local.simulation.latencies import Latencies


@dataclass(frozen=True)
class FleetScenario:
    """Many consumer containers under a steady load, with a synchronized cold-start wave and revocations.

    Times are seconds after the start. Each container gets a Poisson stream of invocations; with
    `cold_start_wave_seconds` set, every container's first invocation falls inside that window at the start.
    """

    containers: int = 10_000
    invocations_per_hour: float = 5_000_000
    duration_seconds: float = 3600.0
    cold_start_wave_seconds: float | None = 1.0
    revocations_at: tuple[float, ...] = (1500.0,)
    # The token in the secret at the start, issued this long ago (None: the secret is empty).
    initial_token_age_seconds: float | None = 600.0
    settings: BundleSettings = field(default_factory=lambda: BundleSettings(schedule_offset_seconds=37.0))
    latencies: Latencies = field(default_factory=Latencies)
    get_quota: int | None = GET_SECRET_VALUE_QUOTA
    idp_rate_limit: bool = True
    outages: tuple[Outage, ...] = ()
    seed: int = 1


@dataclass
class Window:
    """Peaks within a stretch of the run (for example the seconds after a revocation)."""

    label: str
    start: float
    end: float
    secrets_reads: int
    secrets_reads_peak_per_second: int
    idp_requests: int
    idp_requests_peak_per_second: int
    failed_invocations: int


@dataclass
class FleetResult:
    scenario: FleetScenario
    invocations: int
    succeeded: int
    failures: Counter[str]
    cold_starts: int
    queued: int
    secrets_reads: int
    secrets_reads_by: Counter[str]
    secrets_reads_peak_per_second: int
    secrets_reads_peak_at: float | None
    secrets_throttled: int
    secrets_writes: int
    idp_requests: int
    idp_requests_peak_per_second: int
    idp_requests_peak_at: float | None
    idp_outcomes: Counter[str]
    refresher_runs: Counter[str]
    refresher_throttles: Counter[str]
    longest_without_token: float
    windows: list[Window]
    api_requests: int
    events: int
    suspensions: int
    max_threads: int
    wall_seconds: float

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def reads_per_container_hour(self) -> float:
        hours = self.scenario.duration_seconds / 3600
        return self.secrets_reads_by["consumer"] / (self.scenario.containers * hours)


def run_fleet(scenario: FleetScenario, *, windows: Mapping[str, tuple[float, float]] | None = None) -> FleetResult:
    """Simulate `scenario`; `windows` names stretches (seconds after the start) to report peaks for."""
    started = time.perf_counter()
    with Simulation(seed=scenario.seed) as sim:
        start = sim.start
        end = start + scenario.duration_seconds
        bundle = Bundle(
            sim,
            settings=scenario.settings,
            latencies=scenario.latencies,
            get_quota=scenario.get_quota,
            revocations=tuple(start + at for at in scenario.revocations_at),
            outages=tuple(outage.shifted(start) for outage in scenario.outages),
            idp_rate_limit=scenario.idp_rate_limit,
        )
        if scenario.initial_token_age_seconds is not None:
            bundle.store_token(age_seconds=scenario.initial_token_age_seconds)
        bundle.schedule(end)
        rate = scenario.invocations_per_hour / 3600 / scenario.containers
        consumers = [bundle.consumer(f"c{index}") for index in range(scenario.containers)]
        for consumer in consumers:
            if scenario.cold_start_wave_seconds is not None:
                first = start + sim.rng.random() * scenario.cold_start_wave_seconds
            else:
                first = start + sim.rng.expovariate(rate)
            poisson_arrivals(sim, consumer, rate, first, end)
        sim.run(end)
        for consumer in consumers:
            consumer.finish(sim.now)
        result = _fleet_result(scenario, sim, bundle, consumers, windows or {}, time.perf_counter() - started)
    return result


def _fleet_result(
    scenario: FleetScenario,
    sim: Simulation,
    bundle: Bundle,
    consumers: list[Consumer],
    windows: Mapping[str, tuple[float, float]],
    wall_seconds: float,
) -> FleetResult:
    secrets = bundle.secrets
    ue = bundle.usage_engine
    failures: Counter[str] = Counter()
    for consumer in consumers:
        failures.update(consumer.stats.failures)
    failure_times = _failure_times(consumers)

    def relative(second: float | None) -> float | None:
        return None if second is None else second - sim.start

    reported = []
    for label, (low, high) in windows.items():
        a, b = sim.start + low, sim.start + high
        reported.append(
            Window(
                label=label,
                start=low,
                end=high,
                secrets_reads=secrets.gets.between(a, b),
                secrets_reads_peak_per_second=max(
                    (n for s, n in secrets.gets.per_second.items() if a <= s < b), default=0
                ),
                idp_requests=ue.idp_requests.between(a, b),
                idp_requests_peak_per_second=max(
                    (n for s, n in ue.idp_requests.per_second.items() if a <= s < b), default=0
                ),
                failed_invocations=sum(1 for t in failure_times if a <= t < b),
            )
        )
    return FleetResult(
        scenario=scenario,
        invocations=sum(c.stats.invocations for c in consumers),
        succeeded=sum(c.stats.succeeded for c in consumers),
        failures=failures,
        cold_starts=sum(c.stats.cold_starts for c in consumers),
        queued=sum(c.stats.queued for c in consumers),
        secrets_reads=secrets.gets.total,
        secrets_reads_by=Counter(secrets.gets_by),
        secrets_reads_peak_per_second=secrets.gets.peak(),
        secrets_reads_peak_at=relative(secrets.gets.peak_second()),
        secrets_throttled=secrets.throttled["GetSecretValue"],
        secrets_writes=secrets.puts.total,
        idp_requests=ue.idp_requests.total,
        idp_requests_peak_per_second=ue.idp_requests.peak(),
        idp_requests_peak_at=relative(ue.idp_requests.peak_second()),
        idp_outcomes=Counter(ue.idp_outcomes),
        refresher_runs=Counter(bundle.refresher.runs),
        refresher_throttles=Counter(bundle.refresher.throttles),
        longest_without_token=max((g.longest for g in unique_gaps(consumers)), default=0.0),
        windows=reported,
        api_requests=ue.api_requests.total,
        events=sim.events,
        suspensions=sim.suspensions,
        max_threads=sim.max_threads,
        wall_seconds=wall_seconds,
    )


def _failure_times(consumers: list[Consumer]) -> list[float]:
    times: list[float] = []
    for consumer in consumers:
        times.extend(when for when, _ in consumer.failure_log)
    return times
