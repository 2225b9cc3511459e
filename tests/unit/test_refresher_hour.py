"""Hours of continuous rejections on a virtual clock against the real TokenRefresher: the churn is bounded.

A consumer reports every stored token as rejected every 10 s (a persistent 401: wrong audience, missing scope)
while the schedule runs every 5 minutes. Without the backoff this costs an IdP request and a secret version a
minute; with it, at most 8 an hour, in any hour, also when the refresher's container is replaced every run."""

from __future__ import annotations

import pytest

from tests.unit.test_refresher_world import START, World, busiest_hour, in_window
from usage_engine import RefreshOutcome

REPORT_EVERY = 10
SCHEDULE_EVERY = 300
HOURS = 4


def persistent_401(world: World, *, hours: int = HOURS, recycle_every_run: bool = False) -> list[RefreshOutcome]:
    outcomes: list[RefreshOutcome] = []
    for tick in range(0, hours * 3600, REPORT_EVERY):
        world.clock.now = START + tick
        runs: list[tuple[str, str | None]] = [("scheduled", None)] if tick % SCHEDULE_EVERY == 0 else []
        if world.aws.token_puts:
            runs.append(("rejected", world.stored_fingerprint()))
        for reason, fingerprint in runs:
            if recycle_every_run:
                world.recycle()
            outcome = world.run(reason, fingerprint)
            assert isinstance(outcome, RefreshOutcome), outcome
            outcomes.append(outcome)
    return outcomes


@pytest.mark.parametrize("recycle_every_run", [False, True], ids=["warm-container", "new-container-every-run"])
def test_an_hour_of_continuous_rejections_costs_at_most_8_idp_requests_and_8_versions(
    recycle_every_run: bool,
) -> None:
    world = World()
    persistent_401(world, hours=1, recycle_every_run=recycle_every_run)
    idp, versions = len(world.idp.requests), len(world.aws.token_puts)
    # The first token (missing), then rejections at 0, 60, 180, 420, 900 and 1860 s of age 60 * 2**(n-1).
    assert (idp, versions) == (7, 7)
    offsets = [int(t - START) for t in world.idp.requests]
    assert offsets == [0, 10, 70, 190, 430, 910, 1870]
    # Today's behaviour would be one every minute: 60 IdP requests and 60 versions.


@pytest.mark.parametrize("recycle_every_run", [False, True], ids=["warm-container", "new-container-every-run"])
def test_no_hour_of_a_persistent_401_costs_more_than_8(recycle_every_run: bool) -> None:
    world = World()
    outcomes = persistent_401(world, recycle_every_run=recycle_every_run)
    assert busiest_hour(world.idp.requests) <= 8
    assert busiest_hour(world.aws.token_puts) <= 8
    assert len(world.idp.requests) == len(world.aws.token_puts)
    # Every token nearing expiry was still replaced on time, and that refresh reset the streak.
    expiring = [o for o in outcomes if o.refreshed and o.reason == "expiring"]
    assert expiring
    assert min(o.seconds_remaining for o in outcomes if not o.refreshed) > 1200 - REPORT_EVERY
    for hour in range(HOURS):
        assert in_window(world.idp.requests, START + hour * 3600) <= 8


def test_the_backed_off_answers_name_the_stored_token() -> None:
    world = World()
    outcomes = persistent_401(world, hours=1)
    skipped = [o for o in outcomes if not o.refreshed and o.reason == "rejected-within-cooldown"]
    assert len(skipped) > 300
    refreshed = {o.token_fingerprint for o in outcomes if o.refreshed}
    assert {o.token_fingerprint for o in skipped} <= refreshed


def test_the_streak_is_in_the_token_secret_and_a_scheduled_refresh_resets_it() -> None:
    world = World()
    persistent_401(world, hours=1)
    stored = world.aws.current("usage-engine/token")
    assert (stored["minted_for"], stored["rejection_streak"]) == ("rejected", 6)
    # The reports stop; the token nears expiry and the schedule replaces it.
    world.clock.now = START + 1870 + 2400
    outcome = world.run()
    assert isinstance(outcome, RefreshOutcome)
    assert (outcome.refreshed, outcome.reason) == (True, "expiring")
    stored = world.aws.current("usage-engine/token")
    assert stored["minted_for"] == "expiring"
    assert "rejection_streak" not in stored
    # So a rejection of the new token is honoured at once.
    world.clock.now += 5
    again = world.run("rejected", world.stored_fingerprint())
    assert isinstance(again, RefreshOutcome)
    assert (again.refreshed, again.reason) == (True, "rejected")
