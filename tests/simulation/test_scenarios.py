"""Small versions of the benchmark's scenarios: the layer's guarantees, checked on the virtual clock."""

from __future__ import annotations

import pytest

from local.simulation import (
    BundleSettings,
    FleetScenario,
    reads_per_container_hour,
    run_fleet,
    run_outage_case,
    run_storm,
)


@pytest.mark.parametrize("containers", [10, 300])
def test_a_401_storm_costs_exactly_one_idp_request_and_no_failure(containers: int) -> None:
    storm = run_storm(containers)
    assert storm.idp_requests == 1
    assert storm.failed_requests == 0
    # Each container re-reads the secret a bounded number of times (no polling storm).
    assert storm.reads_per_container < 3


def test_a_revocation_right_after_a_refresh_costs_one_idp_request_and_no_failure() -> None:
    """The first rejection of a token is honoured at any age: a token revoked 30 s after a scheduled refresh is
    replaced at once, for the whole fleet with one IdP request (only tokens minted for a rejection wait)."""
    storm = run_storm(20, token_age_seconds=30)
    assert storm.idp_requests == 1
    assert sum(storm.failures.values()) == 0


def test_reads_per_container_hour_layer_vs_300s_ttl() -> None:
    assert reads_per_container_hour("layer", 10, hours=4) <= 2
    assert reads_per_container_hour("ttl-300s", 10, hours=3) == pytest.approx(12, abs=0.5)
    assert reads_per_container_hour("no-cache", 1, hours=2) == pytest.approx(3600, rel=0.01)


def test_a_small_fleet_survives_a_cold_start_wave_and_a_revocation() -> None:
    result = run_fleet(
        FleetScenario(containers=300, invocations_per_hour=150_000, duration_seconds=600, revocations_at=(300.0,)),
        windows={"revocation": (300, 420)},
    )
    assert result.failed == 0
    assert result.idp_requests == 1
    assert result.secrets_throttled == 0
    assert result.cold_starts == 300
    assert result.windows[0].idp_requests == 1


def test_the_same_seed_gives_the_same_run() -> None:
    scenario = FleetScenario(containers=50, invocations_per_hour=50_000, duration_seconds=400, revocations_at=(200.0,))
    first, second = run_fleet(scenario), run_fleet(scenario)
    assert (first.invocations, first.secrets_reads, first.refresher_runs, first.idp_requests) == (
        second.invocations,
        second.secrets_reads,
        second.refresher_runs,
        second.idp_requests,
    )


SETTINGS = BundleSettings()
# An outage that starts when a refresh falls due is survived without a failure if it ends before the token
# enters the consumers' skew: at the worst phase the refresh falls due with just over margin - interval left.
WORST_LEFT = SETTINGS.refresh_margin_seconds - SETTINGS.schedule_interval_seconds + 1
TOLERATED = SETTINGS.refresh_margin_seconds - SETTINGS.schedule_interval_seconds - SETTINGS.token_expiry_skew_seconds


@pytest.mark.parametrize("left_when_due", [WORST_LEFT, SETTINGS.refresh_margin_seconds])
def test_outages_up_to_margin_minus_interval_minus_skew_cause_no_failure_at_any_phase(left_when_due: float) -> None:
    case = run_outage_case(TOLERATED, left_when_due=left_when_due)
    assert case.failed_requests == 0


def test_at_the_worst_phase_an_outage_shorter_than_the_margin_can_still_fail_calls() -> None:
    """The README's "outages shorter than the margin" holds at the schedule's usual phase (see test_day), not at
    every phase: a refresh that fell due with 901 s left, then a 15-minute outage."""
    assert run_outage_case(15 * 60, left_when_due=SETTINGS.refresh_margin_seconds).failed_requests == 0
    worst = run_outage_case(15 * 60, left_when_due=WORST_LEFT)
    assert worst.failed_requests > 0
    assert worst.longest_without_token < 120
