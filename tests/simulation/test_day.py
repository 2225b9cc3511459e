"""A simulated day - the schedule for 24 h, three IdP outages, consumers calling throughout.

The report is printed at the end of the pytest run (tests/simulation/conftest.py) and recorded in the README.
"""

from __future__ import annotations

import pytest

from local.simulation import DayResult, run_day
from tests.simulation.conftest import REPORTS


@pytest.fixture(scope="module")
def day() -> DayResult:
    result = run_day()
    REPORTS.append(result.render())
    return result


def test_an_outage_shorter_than_the_margin_causes_no_consumer_failure(day: DayResult) -> None:
    short = day.outages[0]
    assert short.end - short.start < day.scenario.settings.refresh_margin_seconds
    assert short.failed_requests == 0
    assert short.longest_without_token == 0


def test_flapping_503s_are_ridden_out_by_retries(day: DayResult) -> None:
    assert day.outages[2].failed_requests == 0


def test_an_outage_longer_than_a_token_lifetime_fails_calls_only_while_no_token_can_exist(day: DayResult) -> None:
    long = day.outages[1]
    assert long.failed_requests > 0
    # Calls fail from the moment the last token expired (minus the skew) until the IdP is back, not longer.
    assert long.longest_without_token < (long.end - long.start) - 15 * 60
    assert day.failed_requests == sum(outage.failed_requests for outage in day.outages)


def test_the_day_stays_within_the_limits(day: DayResult) -> None:
    hours = day.scenario.hours
    # Steady refreshes (1.5/h) plus the ones the outages delayed; no hammering of the IdP.
    assert 24 <= day.tokens_issued <= 1.6 * hours
    assert day.secrets_writes == day.tokens_issued
    assert day.idp_outcomes.get("429", 0) == 0
