"""The refresher's policy, with an injected clock: when does a run call the IdP?"""

from __future__ import annotations

import pytest

from usage_engine import AccessToken, Decision, RefreshRequest, RefreshRequestError, StoredToken, decide
from usage_engine.refresher import ForcedAttempt, backoff_seconds, forced_refresh_allowed, next_record
from usage_engine.states import DecisionReason
from usage_engine.token import NO_RECORD, RefreshRecord

NOW = 1_800_000_000
MARGIN = 1200
BASE = 60
LIFETIME = 3600
INTERVAL = 600


def stored(seconds_left: int, value: str = "token-a") -> StoredToken:
    return StoredToken(AccessToken(value=value, expires_at=NOW + seconds_left, issued_at=NOW - 600))


@pytest.mark.parametrize(
    ("store", "request_", "refresh", "reason"),
    [
        (StoredToken(None, "missing"), RefreshRequest(), True, "missing"),
        (
            StoredToken(None, "unreadable (token secret: expires_at: ...)"),
            RefreshRequest(),
            True,
            "unreadable",
        ),
        (stored(3000), RefreshRequest(), False, "fresh"),
        (stored(MARGIN + 1), RefreshRequest(), False, "fresh"),
        (stored(MARGIN), RefreshRequest(), True, "expiring"),
        (stored(30), RefreshRequest(), True, "expiring"),
        (stored(-30), RefreshRequest(), True, "expiring"),
        # A consumer whose cached token expired: the stored one is newer and fresh, so no IdP call.
        (stored(3000), RefreshRequest("expired"), False, "fresh"),
        (stored(100), RefreshRequest("expired"), True, "expiring"),
        (stored(3000), RefreshRequest("forced"), True, "forced"),
    ],
)
def test_decision(store: StoredToken, request_: RefreshRequest, refresh: bool, reason: str) -> None:
    decision = decide(store, request_, now=NOW, margin_seconds=MARGIN)
    assert (decision.refresh, decision.reason) == (refresh, reason)


def test_rejected_token_that_is_still_stored_is_refreshed() -> None:
    store = stored(3000)
    assert store.fingerprint is not None
    decision = decide(store, RefreshRequest("rejected", store.fingerprint), now=NOW, margin_seconds=MARGIN)
    assert (decision.refresh, decision.reason) == (True, "rejected")


def test_rejected_token_already_replaced_is_not_refreshed_again() -> None:
    old = stored(3000, value="old-token").fingerprint
    assert old is not None
    decision = decide(stored(3000, value="new-token"), RefreshRequest("rejected", old), now=NOW, margin_seconds=MARGIN)
    assert (decision.refresh, decision.reason) == (False, "rejected-token-already-replaced")


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (None, RefreshRequest("scheduled")),
        ({}, RefreshRequest("scheduled")),
        ({"reason": "scheduled"}, RefreshRequest("scheduled")),
        ({"version": "0", "detail-type": "Scheduled Event", "source": "aws.scheduler"}, RefreshRequest()),
        ({"reason": "expired"}, RefreshRequest("expired")),
        ({"reason": "forced"}, RefreshRequest("forced")),
        (
            {"reason": "rejected", "token_fingerprint": "0123456789abcdef"},
            RefreshRequest("rejected", "0123456789abcdef"),
        ),
    ],
)
def test_refresh_request_from_event(event: object, expected: RefreshRequest) -> None:
    assert RefreshRequest.from_event(event) == expected


@pytest.mark.parametrize(
    "event",
    [
        [1, 2],
        "scheduled",
        {"reason": "please"},
        {"reason": "rejected"},
        {"reason": "rejected", "token_fingerprint": "XYZ"},
        {"reason": "rejected", "token_fingerprint": "0123456789ABCDEF"},
        {"reason": "rejected", "token_fingerprint": "eyJhbGciOiJSUzI1NiJ9.a.b"},
    ],
)
def test_bad_events_are_typed_errors(event: object) -> None:
    with pytest.raises(RefreshRequestError):
        RefreshRequest.from_event(event)


def minted(age: int, record: RefreshRecord = NO_RECORD, value: str = "token-m") -> StoredToken:
    """A one-hour token issued `age` seconds ago, with the refresher's notes `record`."""
    return StoredToken(AccessToken(value=value, expires_at=NOW - age + LIFETIME, issued_at=NOW - age, record=record))


def rejected(store: StoredToken, *, base: int = BASE) -> Decision:
    assert store.fingerprint is not None
    request = RefreshRequest("rejected", store.fingerprint)
    return decide(store, request, now=NOW, margin_seconds=MARGIN, rejected_cooldown_seconds=base)


@pytest.mark.parametrize(
    "record",
    [
        NO_RECORD,  # written by an older layer
        RefreshRecord(DecisionReason.EXPIRING),
        RefreshRecord(DecisionReason.MISSING),
        RefreshRecord(DecisionReason.FORCED),  # forced outside any run of rejections
        # A streak count without an on-demand reason (hand-edited): not a token minted for a rejection.
        RefreshRecord(DecisionReason.EXPIRING, rejection_streak=5),
    ],
)
@pytest.mark.parametrize("age", [0, 1, 10, 59])
def test_the_first_rejection_of_a_token_is_honoured_at_any_age(record: RefreshRecord, age: int) -> None:
    """A token revoked right after a scheduled refresh is replaced at once, not after a cooldown."""
    assert rejected(minted(age, record)) == Decision(True, DecisionReason.REJECTED)


# The n-th token in a row minted for a rejection waits base * 2**(n-1), at most its normal replacement age.
@pytest.mark.parametrize(
    ("streak", "wait"), [(1, 60), (2, 120), (3, 240), (4, 480), (5, 960), (6, 1920), (7, 2400), (40, 2400)]
)
def test_tokens_minted_for_rejections_back_off_exponentially(streak: int, wait: int) -> None:
    record = RefreshRecord(DecisionReason.REJECTED, rejection_streak=streak)
    assert rejected(minted(wait - 1, record)) == Decision(False, DecisionReason.REJECTED_WITHIN_COOLDOWN)
    # At the cap the token is due for its normal replacement: the expiring rule takes it (and ends the streak).
    expected = DecisionReason.EXPIRING if wait >= LIFETIME - MARGIN else DecisionReason.REJECTED
    assert rejected(minted(wait, record)) == Decision(True, expected)


def test_a_forced_token_minted_during_a_streak_backs_off_like_the_streak() -> None:
    record = RefreshRecord(DecisionReason.FORCED, rejection_streak=3)
    assert rejected(minted(239, record)).reason == "rejected-within-cooldown"
    assert rejected(minted(240, record)).reason == "rejected"


def test_a_token_nearing_expiry_is_replaced_on_time_whatever_its_streak() -> None:
    record = RefreshRecord(DecisionReason.REJECTED, rejection_streak=3)
    # 100 s old, 100 s left: the backoff would wait 240 s, the expiring rule does not.
    store = StoredToken(AccessToken(value="short", expires_at=NOW + 100, issued_at=NOW - 100, record=record))
    assert rejected(store) == Decision(True, DecisionReason.EXPIRING)


def test_a_zero_base_never_backs_off() -> None:
    record = RefreshRecord(DecisionReason.REJECTED, rejection_streak=9)
    assert rejected(minted(0, record), base=0) == Decision(True, DecisionReason.REJECTED)


def test_backoff_seconds() -> None:
    assert [backoff_seconds(n, base=60, cap=1800) for n in range(8)] == [0, 60, 120, 240, 480, 960, 1800, 1800]
    assert backoff_seconds(10**6, base=60, cap=2400) == 2400
    assert backoff_seconds(3, base=60, cap=-5) == 0


# --- forced refreshes: at most one per interval and credentials version -------------------------------------


def forced(store: StoredToken, *, allowed: bool) -> Decision:
    return decide(store, RefreshRequest("forced"), now=NOW, margin_seconds=MARGIN, forced_allowed=allowed)


@pytest.mark.parametrize(
    ("store", "expected"),
    [
        (stored(3000), Decision(False, DecisionReason.FORCED_TOO_SOON)),
        # Too soon for a forced refresh, but a scheduled run would refresh: so does this one.
        (stored(100), Decision(True, DecisionReason.EXPIRING)),
        (StoredToken(None, "missing"), Decision(True, DecisionReason.MISSING)),
    ],
)
def test_a_forced_run_that_comes_too_soon_does_what_a_scheduled_run_would(
    store: StoredToken, expected: Decision
) -> None:
    assert forced(store, allowed=True) == Decision(True, DecisionReason.FORCED)
    assert forced(store, allowed=False) == expected


def forced_record(forced_ago: int, version: str | None = "v-1") -> StoredToken:
    return minted(
        forced_ago, RefreshRecord(DecisionReason.FORCED, credentials_version=version, forced_at=NOW - forced_ago)
    )


@pytest.mark.parametrize(
    ("store", "attempt", "version", "allowed"),
    [
        (minted(30), None, "v-1", True),  # no forced refresh on record
        (forced_record(30), None, "v-1", False),
        (forced_record(INTERVAL - 1), None, "v-1", False),
        (forced_record(INTERVAL), None, "v-1", True),
        (forced_record(30), None, "v-2", True),  # new credentials lift the limit
        (forced_record(30, version=None), None, "v-1", True),
        (forced_record(-30), None, "v-1", True),  # a forced_at in the future is no record of a past request
        (StoredToken(None, "missing"), ForcedAttempt(NOW - 30, "v-1"), "v-1", False),  # a failed attempt counts
        (minted(30), ForcedAttempt(NOW - 30, "v-1"), "v-2", True),
        (minted(30), ForcedAttempt(NOW - INTERVAL, "v-1"), "v-1", True),
    ],
)
def test_forced_refresh_allowed(store: StoredToken, attempt: ForcedAttempt | None, version: str, allowed: bool) -> None:
    assert (
        forced_refresh_allowed(store, attempt, credentials_version=version, now=NOW, interval_seconds=INTERVAL)
        is allowed
    )


# --- the notes written with a new token ----------------------------------------------------------------------


def noted(store: StoredToken, reason: DecisionReason, version: str = "v-1") -> RefreshRecord:
    return next_record(store, reason, now=NOW, credentials_version=version, forced_interval_seconds=INTERVAL)


def test_each_rejection_minted_token_continues_the_streak() -> None:
    first = noted(minted(10), DecisionReason.REJECTED)
    assert (first.minted_for, first.rejection_streak) == (DecisionReason.REJECTED, 1)
    second = noted(minted(70, first), DecisionReason.REJECTED)
    assert second.rejection_streak == 2
    assert (
        noted(
            minted(70, RefreshRecord(DecisionReason.REJECTED, rejection_streak=7)), DecisionReason.REJECTED
        ).rejection_streak
        == 8
    )


@pytest.mark.parametrize("reason", [DecisionReason.EXPIRING, DecisionReason.MISSING, DecisionReason.UNREADABLE])
def test_a_normal_refresh_resets_the_streak(reason: DecisionReason) -> None:
    record = noted(
        minted(10, RefreshRecord(DecisionReason.REJECTED, rejection_streak=5, credentials_version="v-1")), reason
    )
    assert (record.minted_for, record.rejection_streak, record.credentials_version) == (reason, 0, "v-1")


def test_a_forced_refresh_keeps_the_streak_unless_the_credentials_changed() -> None:
    streak = minted(10, RefreshRecord(DecisionReason.REJECTED, rejection_streak=4, credentials_version="v-1"))
    same = noted(streak, DecisionReason.FORCED)
    assert (same.minted_for, same.rejection_streak, same.forced_at) == (DecisionReason.FORCED, 4, NOW)
    operator = noted(streak, DecisionReason.FORCED, version="v-2")
    assert (operator.rejection_streak, operator.credentials_version, operator.forced_at) == (0, "v-2", NOW)


def test_the_last_forced_refresh_is_carried_while_it_limits_the_next() -> None:
    recent = forced_record(INTERVAL - 1)
    assert noted(recent, DecisionReason.REJECTED).forced_at == NOW - INTERVAL + 1
    assert noted(recent, DecisionReason.REJECTED, version="v-2").forced_at is None
    assert noted(forced_record(INTERVAL), DecisionReason.EXPIRING).forced_at is None
