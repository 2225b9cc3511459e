"""Section 6: the fleet simulation (10,000 containers, 5 million invocations per hour) and its stress cases."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from benchmarks.report import Section, Target, table
from usage_engine import TokenUnavailableError, composition
from usage_engine.recovery import TokenRecovery
from usage_engine.states import RefreshReason


class ReadingDuringHoldOff(TokenRecovery):
    """The baseline: the previous release's hold-off, in which every call still read the token secret
    before failing fast (one GetSecretValue per invocation during an outage)."""

    def _fail_fast_while_holding_off(self, reason: RefreshReason) -> None:
        if self.holding_off():
            try:
                self.tokens.get()
            except TokenUnavailableError:
                pass
            else:
                return
        super()._fail_fast_while_holding_off(reason)


@contextlib.contextmanager
def previous_hold_off() -> Iterator[None]:
    """Containers built inside get the baseline recovery (the composition root builds every TokenRecovery)."""
    namespace = vars(composition)
    current = namespace["TokenRecovery"]
    namespace["TokenRecovery"] = ReadingDuringHoldOff
    try:
        yield
    finally:
        namespace["TokenRecovery"] = current


HEADER = [
    "scenario",
    "invocations",
    "peak GetSecretValue/s (quota 10,000)",
    "throttled reads",
    "peak IdP requests/s (limit 10, burst 5)",
    "IdP requests",
    "throttled refresher invokes/s",
    "failed invocations",
    "consumer reads per 1,000 invocations",
]


def fleet_row(label: str, result: Any, scale: float = 1.0) -> list[str]:
    """One row of HEADER; `scale` projects a smaller fleet's per-second figures to the full one."""
    seconds = result.scenario.duration_seconds
    projected = " (projected)" if scale != 1 else ""
    return [
        label,
        f"{result.invocations:,}",
        f"{result.secrets_reads_peak_per_second * scale:,.0f}{projected}",
        f"{result.secrets_throttled:,}",
        f"{result.idp_requests_peak_per_second}",
        f"{result.idp_requests}",
        f"{sum(result.refresher_throttles.values()) * scale / seconds:,.0f}{projected}",
        f"{result.failed:,}",
        f"{1000 * result.secrets_reads_by['consumer'] / max(result.invocations, 1):,.1f}",
    ]


def bench_fleet(quick: bool) -> Section:
    from local.simulation import FleetScenario, Outage, run_fleet

    section = Section("6. Fleet simulation")
    if quick:
        main = FleetScenario(containers=500, invocations_per_hour=250_000, duration_seconds=600, revocations_at=(300,))
    else:
        main = FleetScenario()
    revoked_at = main.revocations_at[0]
    result = run_fleet(main, windows={"wave": (0, 60), "revocation": (revoked_at, revoked_at + 120)})
    wave, storm = result.windows
    section.add(
        "Discrete-event simulation (`local.simulation`): the real `TokenProvider`, `UsageEngineClient`, "
        "`LambdaRefreshRequester` and `TokenRefresher`/`decide()` on a virtual clock; fakes only at the AWS and HTTP "
        "boundary, modelling latency, the GetSecretValue quota (throttling answered as AWS does, retried as "
        "botocore's standard mode does), reserved concurrency 1 and the IdP's rate limit.",
        "",
        f"**The target scenario**: {main.containers:,} containers, {main.invocations_per_hour:,.0f} invocations/h "
        f"(Poisson, {main.invocations_per_hour / 3600 / main.containers:.3f}/s each) for "
        f"{main.duration_seconds / 60:g} min; all containers cold-start within {main.cold_start_wave_seconds:g} s "
        f"(init 0.25-0.45 s); the IdP revokes every token at {revoked_at / 60:g} min; the stored token "
        f"was 10 min old at the start; schedule every 5 min.",
        "",
        *table(HEADER, [fleet_row("wave + revocation", result)]),
        f"- cold-start wave (first 60 s): {wave.secrets_reads:,} reads, peak {wave.secrets_reads_peak_per_second:,}/s",
        f"- revocation (2 min from it): {storm.secrets_reads:,} reads, peak {storm.secrets_reads_peak_per_second:,}/s, "
        f"{storm.idp_requests} IdP request(s), {storm.failed_invocations} failed invocations",
        f"- reads per container-hour over this hour (cold start and revocation included): "
        f"{result.reads_per_container_hour:.2f}; refresher runs: "
        + ", ".join(f"{k} {v}" for k, v in sorted(result.refresher_runs.items())),
        f"- longest time any container was without a valid token: {result.longest_without_token:.1f} s",
        f"- simulation: {result.events:,} events, {result.suspensions:,} suspensions, {result.max_threads} threads at "
        f"most, {result.wall_seconds:.0f} s wall",
        "",
    )
    section.targets.append(
        Target(
            "fleet simulation under both limits with zero failed invocations",
            f"reads {result.secrets_reads_peak_per_second:,}/s, IdP {result.idp_requests_peak_per_second}/s, "
            f"{result.failed} failed",
            result.secrets_reads_peak_per_second <= 10_000
            and result.idp_requests_peak_per_second <= 5
            and result.failed == 0
            and result.secrets_throttled == 0,
        )
    )

    # Stress 1: the revocation lands inside the cold-start wave.
    overlap = FleetScenario(
        containers=main.containers,
        invocations_per_hour=main.invocations_per_hour,
        duration_seconds=120,
        revocations_at=(0.5,),
    )
    # Stress 2: an IdP outage longer than the token's remaining life, at fleet load. Simulated with fewer
    # containers at the same per-container rate; reads and invokes per second projected linearly.
    containers = 200 if quick else 2000
    outage = FleetScenario(
        containers=containers,
        invocations_per_hour=main.invocations_per_hour / main.containers * containers,
        duration_seconds=3600,
        cold_start_wave_seconds=None,
        revocations_at=(),
        initial_token_age_seconds=3600 - 120,
        outages=(Outage(start=0, end=10_000, mode="connect-timeout"),),
    )
    scale = main.containers / containers
    outage_result = run_fleet(outage)
    with previous_hold_off():
        outage_baseline = run_fleet(outage)
    section.add(
        "**Stress cases beyond the target scenario**:",
        "",
        *table(
            HEADER,
            [
                fleet_row(
                    f"revocation inside the cold-start wave (at 0.5 s), {overlap.containers:,} containers",
                    run_fleet(overlap),
                ),
                fleet_row(
                    f"IdP unreachable, token expires at 1 min; {containers:,} containers (x {scale:g})",
                    outage_result,
                    scale,
                ),
                fleet_row(
                    "the same, baseline: the previous release's hold-off (a secret read per call)",
                    outage_baseline,
                    scale,
                ),
            ],
        ),
        "After a 401 a container waits a random 0-0.5 s before re-reading the secret, so most re-reads come after "
        "the first refresh has stored the new token. With the token expired and the IdP down no invocation can "
        "succeed (no token exists); what the failures cost is the load they cause. After an on-demand refresh "
        "ended without a token, a container holds off for a jittered 15-30 s: its invocations fail at once with a "
        "typed retryable error, with no secret read and no refresher call (a cached token that is still usable "
        "is served); the first invocation after the window probes once (one read, one refresher call). The "
        "baseline row runs the same fleet with the previous release's hold-off, which read the secret on every "
        "call. In this fixed fleet slow invocations queue behind each other, where Lambda would scale out.",
        "",
    )
    reads_per_1000 = 1000 * outage_result.secrets_reads_by["consumer"] / max(outage_result.invocations, 1)
    baseline_per_1000 = 1000 * outage_baseline.secrets_reads_by["consumer"] / max(outage_baseline.invocations, 1)
    section.targets.append(
        Target(
            "IdP unreachable, token expired: consumer GetSecretValue per 1,000 invocations <= 50",
            f"{reads_per_1000:,.1f} (previous hold-off: {baseline_per_1000:,.1f})",
            reads_per_1000 <= 50,
        )
    )
    return section
