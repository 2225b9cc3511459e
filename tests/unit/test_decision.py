"""The refresher's policy, with an injected clock: when does a run call the IdP?"""

from __future__ import annotations

import pytest

from usage_engine import AccessToken, Decision, RefreshRequest, RefreshRequestError, StoredToken, decide

NOW = 1_800_000_000
MARGIN = 1200


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


def test_rejected_cooldown() -> None:
    young = StoredToken(AccessToken(value="young", expires_at=NOW + 3590, issued_at=NOW - 10))
    request = RefreshRequest("rejected", young.fingerprint)
    assert decide(young, request, now=NOW, margin_seconds=MARGIN, rejected_cooldown_seconds=60) == Decision(
        False, "rejected-within-cooldown"
    )
    assert decide(young, request, now=NOW, margin_seconds=MARGIN, rejected_cooldown_seconds=5) == Decision(
        True, "rejected"
    )
