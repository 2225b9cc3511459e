"""The refresher's limits on the real TokenRefresher (fakes at the AWS/HTTP boundary, virtual clock):
rejected credentials are remembered, forced refreshes are rate-limited, every answer names the stored token."""

from __future__ import annotations

import pytest

from tests.unit.test_refresher_world import GOOD_CREDENTIALS, START, TOKEN_SECRET, World, busiest_hour, in_window
from usage_engine import IdpRejectedError, IdpUnavailableError, RefreshFailedError, RefreshOutcome, fingerprint
from usage_engine.refresher import CredentialsRejectedError


def refreshed(world: World, reason: str = "scheduled", fp: str | None = None) -> RefreshOutcome:
    outcome = world.run(reason, fp)
    assert isinstance(outcome, RefreshOutcome), outcome
    return outcome


def failed(world: World, reason: str = "scheduled", fp: str | None = None) -> RefreshFailedError:
    outcome = world.run(reason, fp)
    assert isinstance(outcome, RefreshFailedError), outcome
    return outcome


# --- every answer identifies the token it stored or found ------------------------------------------------------


def test_every_answer_carries_the_stored_tokens_fingerprint_never_the_token() -> None:
    world = World()
    first = refreshed(world).response()
    stored = world.aws.current(TOKEN_SECRET)["access_token"]
    assert first == {
        "refreshed": True,
        "reason": "missing",
        "expires_at": int(START) + 3600,
        "token_fingerprint": fingerprint(stored),
    }
    world.clock.now += 60
    for reason in ("scheduled", "expired"):
        answer = refreshed(world, reason).response()
        assert answer == {"refreshed": False, "reason": "fresh", "expires_at": first["expires_at"]} | {
            "token_fingerprint": fingerprint(stored)
        }
    replaced = refreshed(world, "rejected", "0123456789abcdef").response()
    assert (replaced["reason"], replaced["token_fingerprint"]) == (
        "rejected-token-already-replaced",
        fingerprint(stored),
    )
    assert all(stored not in str(value) for value in replaced.values())


# --- credentials the IdP rejected ----------------------------------------------------------------------------


def broken_credentials_world() -> World:
    """No token yet and credentials the IdP rejects (401 invalid_client): the first deployment gone wrong."""
    world = World()
    world.idp.status = 401
    return world


@pytest.mark.parametrize("reason", ["expired", "rejected"])
def test_on_demand_runs_fail_fast_without_an_idp_request_once_the_credentials_were_rejected(reason: str) -> None:
    world = broken_credentials_world()
    first = failed(world, "expired")
    assert type(first.cause) is IdpRejectedError
    assert len(world.idp.requests) == 1
    for _ in range(50):
        world.clock.now += 10
        error = failed(world, reason, "0123456789abcdef" if reason == "rejected" else None)
        assert isinstance(error.cause, CredentialsRejectedError)
        assert isinstance(error.cause, IdpRejectedError)  # callers that handle IdpRejectedError still do
        assert error.cause.status == 401
        assert "invalid_client" in str(error)
        assert "on-demand runs do not retry" in str(error)
    assert len(world.idp.requests) == 1
    assert world.aws.calls["PutSecretValue"] == 0


def test_new_credentials_are_tried_at_once() -> None:
    world = broken_credentials_world()
    failed(world, "expired")
    world.clock.now += 5
    world.idp.status = 200
    world.new_credentials()
    assert refreshed(world, "expired").reason == "missing"
    assert len(world.idp.requests) == 2


def test_a_forced_refresh_tries_the_same_credentials_again() -> None:
    world = broken_credentials_world()
    failed(world, "expired")
    world.clock.now += 5
    assert isinstance(failed(world, "expired").cause, CredentialsRejectedError)
    world.idp.status = 200  # the IdP's side was fixed (e.g. the application access re-enabled)
    assert refreshed(world, "forced").reason == "forced"
    assert len(world.idp.requests) == 2


def test_scheduled_runs_retry_rejected_credentials_with_exponential_backoff() -> None:
    """Three hours of a broken credential: the schedule every 5 minutes, a consumer asking every 10 s."""
    world = broken_credentials_world()
    for tick in range(0, 3 * 3600, 10):
        world.clock.now = START + tick
        failed(world, "expired")
        if tick % 300 == 0:
            failed(world, "scheduled")
    offsets = [int(t - START) for t in world.idp.requests]
    # Retries at 60 * 2**(n-1) s after the last failure at the earliest, at most 30 minutes apart.
    assert offsets[:7] == [0, 300, 600, 900, 1500, 2700, 4500]
    assert in_window(world.idp.requests, START) == 6
    assert busiest_hour(world.idp.requests) <= 6
    assert in_window(world.idp.requests, START + 2 * 3600) == 2
    assert world.aws.calls["PutSecretValue"] == 0  # a failure never writes


def test_a_new_container_forgets_and_pays_one_idp_request_to_learn_again() -> None:
    world = broken_credentials_world()
    failed(world, "expired")
    world.recycle()
    world.clock.now += 10
    assert type(failed(world, "expired").cause) is IdpRejectedError
    world.clock.now += 10
    assert isinstance(failed(world, "expired").cause, CredentialsRejectedError)
    assert len(world.idp.requests) == 2


def test_transient_idp_failures_are_not_remembered() -> None:
    world = World()
    world.idp.status = 503
    assert isinstance(failed(world, "expired").cause, IdpUnavailableError)
    world.clock.now += 10
    assert isinstance(failed(world, "expired").cause, IdpUnavailableError)
    assert len(world.idp.requests) == 2


# --- forced refreshes --------------------------------------------------------------------------------------------


def seeded() -> World:
    world = World()
    refreshed(world)
    world.clock.now += 120
    return world


def test_a_second_forced_refresh_within_10_minutes_is_a_skip_not_an_idp_request() -> None:
    world = seeded()
    forced = refreshed(world, "forced")
    assert (forced.refreshed, forced.reason) == (True, "forced")
    world.clock.now += 599
    again = refreshed(world, "forced")
    assert (again.refreshed, again.reason) == (False, "forced-too-soon")
    assert again.token_fingerprint == forced.token_fingerprint
    assert len(world.idp.requests) == 2
    world.clock.now += 1
    assert refreshed(world, "forced").reason == "forced"
    assert len(world.idp.requests) == 3


def test_the_limit_survives_a_new_container() -> None:
    world = seeded()
    refreshed(world, "forced")
    world.recycle()
    world.clock.now += 60
    assert refreshed(world, "forced").reason == "forced-too-soon"


def test_new_credentials_lift_the_limit() -> None:
    """`make set-credentials` stores a new version, then forces: never refused."""
    world = seeded()
    refreshed(world, "forced")
    world.clock.now += 30
    world.new_credentials(GOOD_CREDENTIALS | {"client_secret": "not-a-real-secret-2"})
    assert refreshed(world, "forced").reason == "forced"
    world.clock.now += 30
    assert refreshed(world, "forced").reason == "forced-too-soon"


def test_a_failed_forced_request_counts_too() -> None:
    world = seeded()
    world.idp.status = 503
    assert isinstance(failed(world, "forced").cause, IdpUnavailableError)
    world.idp.status = 200
    world.clock.now += 60
    assert refreshed(world, "forced").reason == "forced-too-soon"
    assert len(world.idp.requests) == 2


def test_a_forced_run_that_is_too_soon_still_refreshes_a_token_that_needs_it() -> None:
    world = seeded()
    refreshed(world, "forced")
    world.aws.put(TOKEN_SECRET, "not json")  # hand-edited meanwhile
    world.clock.now += 60
    assert refreshed(world, "forced").reason == "unreadable"


def test_forcing_cannot_skip_the_rejection_backoff() -> None:
    """A compromised consumer alternating `forced` and `rejected` every 10 s for two hours."""
    world = seeded()
    start = world.clock.now
    minted: list[tuple[int, str]] = []
    for tick in range(0, 2 * 3600, 10):
        world.clock.now = start + tick
        for outcome in (refreshed(world, "forced"), refreshed(world, "rejected", world.stored_fingerprint())):
            if outcome.refreshed:
                minted.append((tick // 3600, str(outcome.reason)))
    assert [minted.count((hour, "forced")) for hour in (0, 1)] == [6, 6]
    # Each forced refresh keeps the streak, so the rejections after it keep backing off: 0, 60, 180, 420 and
    # 1080 s in the first hour, none in the second (a forced token replaces each before its backoff ends).
    assert [minted.count((hour, "rejected")) for hour in (0, 1)] == [5, 0]
    assert [in_window(world.idp.requests, start + hour * 3600) for hour in (0, 1)] == [11, 6]
    assert world.aws.current(TOKEN_SECRET)["rejection_streak"] == 5
