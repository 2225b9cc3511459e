"""A simulated day (the schedule for 24 h, three IdP outages, consumers calling throughout), and single
outages timed against the refresh margin."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from local.simulation.bundle import Bundle, BundleSettings, ConsumerFunction, poisson_arrivals, unique_gaps
from local.simulation.engine import HOUR, MINUTE, Simulation
from local.simulation.fake_usage_engine import Outage
from local.simulation.latencies import Latencies


def default_day_outages() -> tuple[Outage, ...]:
    """Three IdP outages (seconds after the start of the day).

    With the schedule every 5 minutes from 00:00 and the first token issued then, a refresh falls due at every
    40th minute (40 minutes after the last refresh, 20 minutes - the margin - before the old token expires):
    the short outage starts exactly when one falls due, its worst moment at that phase.
    """
    return (
        Outage(
            start=2 * HOUR,
            end=2 * HOUR + 15 * MINUTE,
            mode="connect-timeout",
            label="short: unreachable for 15 min (< the 20 min margin), from a refresh falling due",
        ),
        Outage(
            start=8 * HOUR,
            end=9 * HOUR + 15 * MINUTE,
            mode="status",
            status=503,
            retry_after=30,
            label="long: 503 (Retry-After 30) for 75 min (> a token's 60 min lifetime)",
        ),
        Outage(
            start=16 * HOUR,
            end=16 * HOUR + 45 * MINUTE,
            mode="status",
            status=503,
            down_seconds=50.0,
            up_seconds=10.0,
            label="flapping: 503 for 50 s, up for 10 s, for 45 min",
        ),
    )


@dataclass(frozen=True)
class DayScenario:
    hours: float = 24.0
    consumers: int = 10
    # Each consumer container is invoked as a Poisson stream of this many calls per second.
    calls_per_second: float = 0.5
    outages: tuple[Outage, ...] = field(default_factory=default_day_outages)
    settings: BundleSettings = field(default_factory=BundleSettings)
    latencies: Latencies = field(default_factory=Latencies)
    seed: int = 5


@dataclass
class OutageReport:
    label: str
    start: float
    end: float
    failed_requests: int
    longest_without_token: float
    idp_requests: int


@dataclass
class DayResult:
    scenario: DayScenario
    idp_requests: int
    idp_outcomes: Counter[str]
    tokens_issued: int
    secrets_reads: int
    secrets_reads_by: Counter[str]
    secrets_writes: int
    requests: int
    failed_requests: int
    failures: Counter[str]
    longest_without_token: float
    longest_without_token_at: float | None
    outages: list[OutageReport]
    refresher_runs: Counter[str]
    refresher_reasons: Counter[str]
    refresher_throttles: Counter[str]
    async_retries: int
    async_dropped: int
    wall_seconds: float
    events: int
    containers: int
    cold_starts: int
    slowest_failure: float

    def render(self) -> str:
        """The day's report, for `make day`, `make test` and the README."""
        s = self.scenario

        def clock(seconds: float) -> str:
            return f"{int(seconds // 3600):02d}:{int(seconds % 3600 // 60):02d}"

        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(self.idp_outcomes.items()))
        failures = ", ".join(f"{k} {v}" for k, v in sorted(self.failures.items())) or "none"
        runs = ", ".join(f"{k} {v}" for k, v in sorted(self.refresher_runs.items()))
        lines = [
            f"Simulated day: {s.hours:g} h, schedule every {s.settings.schedule_interval_seconds / 60:g} min, "
            f"margin {s.settings.refresh_margin_seconds} s, skew {s.settings.token_expiry_skew_seconds} s, "
            f"{s.consumers} consumers x {s.calls_per_second:g} calls/s (virtual clock, seed {s.seed}, "
            f"{self.wall_seconds:.1f} s wall)",
            f"  IdP token requests:      {self.idp_requests} HTTP attempts ({outcomes}); "
            f"{self.tokens_issued} tokens issued",
            f"  Secrets Manager:         {self.secrets_reads} GetSecretValue "
            f"(consumers {self.secrets_reads_by['consumer']}, refresher {self.secrets_reads_by['refresher']}), "
            f"{self.secrets_writes} PutSecretValue",
            f"  consumer requests:       {self.requests}, failed {self.failed_requests} ({failures}); "
            f"{self.containers} containers ({self.cold_starts} cold starts)",
            f"  longest without a valid token (any consumer): {self.longest_without_token:.1f} s"
            + (f" (from {clock(self.longest_without_token_at)})" if self.longest_without_token_at is not None else ""),
            f"  refresher runs:          {runs}; throttled invokes: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.refresher_throttles.items()))
            + f"; async retries {self.async_retries}, dropped {self.async_dropped}",
            "  outages:",
        ]
        for outage in self.outages:
            lines.append(
                f"    {clock(outage.start)}-{clock(outage.end)} {outage.label}: failed requests "
                f"{outage.failed_requests}, longest without a valid token {outage.longest_without_token:.1f} s, "
                f"IdP attempts {outage.idp_requests}"
            )
        return "\n".join(lines)


def run_day(scenario: DayScenario | None = None) -> DayResult:
    scenario = scenario or DayScenario()
    started = time.perf_counter()
    with Simulation(seed=scenario.seed) as sim:
        start = sim.start
        end = start + scenario.hours * HOUR
        bundle = Bundle(
            sim,
            settings=scenario.settings,
            latencies=scenario.latencies,
            outages=tuple(outage.shifted(start) for outage in scenario.outages),
        )
        bundle.schedule(end)
        functions = [ConsumerFunction(bundle, f"f{index}") for index in range(scenario.consumers)]
        for function in functions:
            # The first scheduled run (00:00) stores the first token; consumers start right after it.
            poisson_arrivals(sim, function, scenario.calls_per_second, start + 5 + sim.rng.random(), end)
        sim.run(end)
        consumers = [container for function in functions for container in function.containers]
        for consumer in consumers:
            consumer.finish(sim.now)
        ue = bundle.usage_engine
        failures: Counter[str] = Counter()
        for consumer in consumers:
            failures.update(consumer.stats.failures)
        trackers = unique_gaps(consumers)
        longest = max(trackers, key=lambda g: g.longest)
        reports = []
        for outage in scenario.outages:
            # What an outage caused shows up while it lasts and until a token's lifetime after it.
            low, high = start + outage.start, start + outage.end + HOUR
            gaps = [b - a for g in trackers for a, b in g.gaps if low <= a < high]
            reports.append(
                OutageReport(
                    label=outage.label,
                    start=outage.start,
                    end=outage.end,
                    failed_requests=sum(1 for c in consumers for t, _ in c.failure_log if low <= t < high),
                    longest_without_token=max(gaps, default=0.0),
                    idp_requests=ue.idp_requests.between(start + outage.start, start + outage.end),
                )
            )
        result = DayResult(
            scenario=scenario,
            idp_requests=ue.idp_requests.total,
            idp_outcomes=Counter(ue.idp_outcomes),
            tokens_issued=ue.idp_issued.total,
            secrets_reads=bundle.secrets.gets.total,
            secrets_reads_by=Counter(bundle.secrets.gets_by),
            secrets_writes=bundle.secrets.puts.total,
            requests=sum(c.stats.invocations for c in consumers),
            failed_requests=sum(failures.values()),
            failures=failures,
            longest_without_token=longest.longest,
            longest_without_token_at=None if longest.longest_at is None else longest.longest_at - start,
            outages=reports,
            refresher_runs=Counter(bundle.refresher.runs),
            refresher_reasons=Counter(bundle.refresher.run_reasons),
            refresher_throttles=Counter(bundle.refresher.throttles),
            async_retries=bundle.refresher.async_retried,
            async_dropped=bundle.refresher.async_dropped,
            wall_seconds=time.perf_counter() - started,
            events=sim.events,
            containers=len(consumers),
            cold_starts=sum(c.stats.cold_starts for c in consumers),
            slowest_failure=max((c.stats.slowest_failure for c in consumers), default=0.0),
        )
    return result


@dataclass
class OutageCase:
    duration: float
    left_when_due: float
    failed_requests: int
    requests: int
    longest_without_token: float


def run_outage_case(
    duration: float,
    *,
    left_when_due: float,
    mode: str = "connect-timeout",
    consumers: int = 5,
    calls_per_second: float = 1.0,
    settings: BundleSettings | None = None,
    seed: int = 11,
) -> OutageCase:
    """An IdP outage of `duration` s that starts at the scheduled run where a refresh falls due, the stored
    token then having `left_when_due` s left (between margin - interval and margin)."""
    settings = settings or BundleSettings()
    interval = settings.schedule_interval_seconds
    due = 2 * interval
    with Simulation(seed=seed) as sim:
        start = sim.start
        expires_at = due + left_when_due
        outage = Outage(start=start + due, end=start + due + duration, mode=mode)
        bundle = Bundle(sim, settings=settings, outages=(outage,))
        bundle.store_token(age_seconds=3600 - expires_at)
        end = start + expires_at + duration + 15 * MINUTE
        bundle.schedule(end)
        functions = [ConsumerFunction(bundle, f"f{i}") for i in range(consumers)]
        for function in functions:
            poisson_arrivals(sim, function, calls_per_second, start + sim.rng.random(), end)
        sim.run(end)
        fleet = [container for function in functions for container in function.containers]
        for consumer in fleet:
            consumer.finish(sim.now)
        return OutageCase(
            duration=duration,
            left_when_due=left_when_due,
            failed_requests=sum(sum(c.stats.failures.values()) for c in fleet),
            requests=sum(c.stats.invocations for c in fleet),
            longest_without_token=max(g.longest for g in unique_gaps(fleet)),
        )
