"""TokenRecovery at its edges, on a clock that starts at 0 (exact arithmetic) and with the jitter pinned to
either end of its range: the busy loop's and the read-your-write loop's delays and deadlines, the hold-off's
window (doubling, capped, reset by a success) and what it still serves, and every message it ends with."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.unit.test_recovery import Refresher, Secrets
from usage_engine import (
    AccessToken,
    DeadlineExceededError,
    RefreshAnswer,
    RefreshHoldOffError,
    RefreshUnavailableError,
    TokenProvider,
    TokenRecovery,
    TokenStore,
    TokenUnavailableError,
)
from usage_engine import recovery as recovery_module
from usage_engine.deadline import MIN_ATTEMPT_SECONDS, Deadline, deadline_scope
from usage_engine.errors import TokenRejectedError
from usage_engine.recovery import (
    BUSY_ATTEMPTS,
    BUSY_BASE_DELAY_SECONDS,
    MAX_REFRESH_HOLD_OFF_SECONDS,
    READ_YOUR_WRITE_ATTEMPTS,
    READ_YOUR_WRITE_BASE_DELAY_SECONDS,
    REFRESH_HOLD_OFF_SECONDS,
    REJECTED_REREAD_JITTER_SECONDS,
)
from usage_engine.secrets_manager import SecretsManagerSecret
from usage_engine.states import RefreshReason, RefreshResult

BUSY = RefreshAnswer(RefreshResult.BUSY)
SKIPPED = RefreshAnswer(RefreshResult.SKIPPED)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Jitter:
    """random for the recovery module: uniform(a, b) answers b (`high`) or a."""

    def __init__(self, *, high: bool) -> None:
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


@pytest.fixture
def high(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recovery_module, "random", Jitter(high=True))


@pytest.fixture
def low(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recovery_module, "random", Jitter(high=False))


def token(value: str, *, expires_at: int = 10_000) -> AccessToken:
    return AccessToken(value=value, expires_at=expires_at, issued_at=1)


EXPIRED = token("expired", expires_at=1)


def make(secrets: Secrets, refresher: Refresher | None, clock: Clock) -> TokenRecovery:
    provider = TokenProvider(TokenStore(SecretsManagerSecret(secrets, "token")), clock=clock, expiry_skew_seconds=0)  # type: ignore[arg-type]
    return TokenRecovery(provider, refresher, sleep=clock.sleep, clock=clock)


def past_a_hold_off() -> tuple[Clock, Refresher, Secrets, TokenRecovery]:
    """A recovery whose one on-demand refresh failed, at the moment its hold-off window ends."""
    clock = Clock()
    refresher = Refresher(RefreshUnavailableError("down"))
    secrets = Secrets(None)
    subject = make(secrets, refresher, clock)
    with pytest.raises(RefreshUnavailableError):
        subject.usable_token()
    clock.now += REFRESH_HOLD_OFF_SECONDS
    return clock, refresher, secrets, subject


# --- the busy loop ---------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("high")
def test_a_busy_refresher_is_waited_for_with_doubling_delays_and_no_sleep_after_the_last() -> None:
    clock = Clock()
    subject = make(Secrets(None), Refresher(BUSY), clock)
    with pytest.raises(TokenUnavailableError) as caught:
        subject.usable_token()
    assert clock.slept == [BUSY_BASE_DELAY_SECONDS * 2**attempt for attempt in range(BUSY_ATTEMPTS - 1)]
    assert str(caught.value) == "no valid token after asking the refresher (expired): token secret token is missing"


@pytest.mark.usefixtures("low")
def test_the_busy_delays_start_at_zero() -> None:
    clock = Clock()
    with pytest.raises(TokenUnavailableError):
        make(Secrets(None), Refresher(BUSY), clock).usable_token()
    assert clock.slept == [0.0] * (BUSY_ATTEMPTS - 1)


@pytest.mark.usefixtures("high")
def test_a_busy_wait_goes_ahead_with_exactly_the_time_for_it_and_an_attempt() -> None:
    clock = Clock()
    subject = make(Secrets(None), Refresher(BUSY), clock)
    with (
        deadline_scope(Deadline(BUSY_BASE_DELAY_SECONDS + MIN_ATTEMPT_SECONDS, clock)),
        pytest.raises(DeadlineExceededError),
    ):
        subject.usable_token()
    # The wait fitted; what comes after it (a read, the next wait) has no time left.
    assert clock.slept == [BUSY_BASE_DELAY_SECONDS]
    assert not subject.holding_off()


@pytest.mark.usefixtures("high")
def test_a_busy_wait_that_would_end_past_the_deadline_is_not_started() -> None:
    clock = Clock()
    subject = make(Secrets(None), Refresher(BUSY), clock)
    with deadline_scope(Deadline(BUSY_BASE_DELAY_SECONDS, clock)), pytest.raises(DeadlineExceededError) as caught:
        subject.usable_token()
    assert clock.slept == []
    assert caught.value.what == "waiting for the busy token refresher"


@pytest.mark.usefixtures("high")
def test_a_busy_refresher_whose_token_is_stored_meanwhile_is_not_asked_again() -> None:
    clock = Clock()
    refresher = Refresher(BUSY)
    subject = make(Secrets(None, token("new")), refresher, clock)
    assert subject.usable_token() == token("new")
    assert (len(refresher.calls), clock.slept) == (1, [])


# --- the hold-off ----------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("high")
def test_the_hold_off_window_doubles_with_each_failure_up_to_its_cap_and_a_success_resets_it() -> None:
    clock = Clock()
    secrets = Secrets(None)
    subject = make(secrets, Refresher(RefreshUnavailableError("down")), clock)
    windows = []
    for _ in range(6):
        with pytest.raises(RefreshUnavailableError):
            subject.usable_token()
        with pytest.raises(RefreshHoldOffError) as caught:
            subject.usable_token()
        windows.append(caught.value.retry_after_seconds)
        clock.now += caught.value.retry_after_seconds
    assert windows == [min(REFRESH_HOLD_OFF_SECONDS * 2**n, MAX_REFRESH_HOLD_OFF_SECONDS) for n in range(6)]
    # The schedule stored a token: a plain read succeeds, and the next failure starts from the first window.
    secrets.values = [token("good", expires_at=int(clock.now) + 10)]
    assert subject.usable_token().value == "good"
    clock.now += 10
    with pytest.raises(RefreshUnavailableError):
        subject.usable_token()
    with pytest.raises(RefreshHoldOffError) as caught:
        subject.usable_token()
    assert caught.value.retry_after_seconds == REFRESH_HOLD_OFF_SECONDS


@pytest.mark.usefixtures("high")
def test_a_successful_refresh_resets_the_window_too() -> None:
    clock, refresher, secrets, subject = past_a_hold_off()
    refresher.answers = [RefreshAnswer(RefreshResult.REFRESHED, token("fresh").fingerprint)]
    secrets.values = [None, token("fresh", expires_at=int(clock.now) + 5)]
    assert subject.usable_token().value == "fresh"
    clock.now += 5
    refresher.answers = [RefreshUnavailableError("down")]
    secrets.values = [None]
    with pytest.raises(RefreshUnavailableError):
        subject.usable_token()
    with pytest.raises(RefreshHoldOffError) as caught:
        subject.usable_token()
    assert caught.value.retry_after_seconds == REFRESH_HOLD_OFF_SECONDS


def test_the_hold_off_ends_at_exactly_its_time_and_says_how_long_is_left() -> None:
    clock = Clock()
    subject = make(Secrets(token("good")), Refresher(SKIPPED), clock)
    subject._hold_off_until = 0.4
    assert subject.holding_off()
    with pytest.raises(RefreshHoldOffError) as caught:
        subject.usable_token()
    assert caught.value.retry_after_seconds == 0.4
    assert str(caught.value) == "no valid token; an on-demand refresh (expired) failed moments ago, next attempt in 0 s"
    clock.now = 0.4
    assert not subject.holding_off()
    assert subject.usable_token().value == "good"


def test_while_holding_off_a_cached_token_serves_expiry_but_not_a_rejection() -> None:
    clock = Clock()
    secrets = Secrets(token("good"))
    subject = make(secrets, Refresher(SKIPPED), clock)
    cached = subject.usable_token()
    subject._hold_off_until = 100.0
    assert subject.usable_token() is cached
    with pytest.raises(RefreshHoldOffError) as caught:
        subject.replace_rejected(cached)
    assert str(caught.value) == (
        "no valid token; an on-demand refresh (rejected) failed moments ago, next attempt in 100 s"
    )
    assert secrets.reads == 1


@pytest.mark.usefixtures("high")
def test_a_probe_after_a_hold_off_that_finds_the_refresher_busy_gives_up_at_once() -> None:
    _clock, refresher, _, subject = past_a_hold_off()
    refresher.answers = [BUSY]
    with pytest.raises(TokenUnavailableError) as caught:
        subject.usable_token()
    assert str(caught.value) == "no valid token after asking the refresher (expired): another refresh was running"
    assert len(refresher.calls) == 2


@pytest.mark.usefixtures("high")
def test_a_probe_after_a_hold_off_reads_the_token_a_skipped_refresh_left() -> None:
    _clock, refresher, secrets, subject = past_a_hold_off()
    refresher.answers = [SKIPPED]
    secrets.values = [None, token("scheduled")]
    assert subject.usable_token().value == "scheduled"


def test_the_hold_off_is_logged_with_its_facts(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery_module, "random", type("R", (), {"uniform": lambda self, a, b: 0.7777})())
    clock = Clock()
    subject = make(Secrets(None), Refresher(RefreshUnavailableError("down")), clock)
    with caplog.at_level(logging.INFO, logger="usage_engine.recovery"), pytest.raises(RefreshUnavailableError):
        subject.usable_token()
    (record,) = [r for r in caplog.records if r.getMessage() == "On-demand refresh failed; holding off"]
    assert record.retry_after_seconds == round(0.7777 * REFRESH_HOLD_OFF_SECONDS, 1)  # type: ignore[attr-defined]
    assert (record.failed_refreshes, record.error_type, record.reason) == (1, "RefreshUnavailableError", "expired")  # type: ignore[attr-defined]


# --- after a rejection -----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("low")
def test_a_rejected_token_is_re_read_after_a_jitter_from_zero() -> None:
    clock = Clock()
    subject = make(Secrets(token("old"), token("new")), Refresher(SKIPPED), clock)
    old = subject.usable_token()
    assert subject.replace_rejected(old).value == "new"
    assert clock.slept == [0.0]


@pytest.mark.usefixtures("high")
def test_the_rejection_jitter_ends_by_the_deadline() -> None:
    clock = Clock()
    subject = make(Secrets(token("old"), token("new")), Refresher(SKIPPED), clock)
    old = subject.usable_token()
    with deadline_scope(Deadline(0.3, clock)), pytest.raises(DeadlineExceededError):
        # The jitter is cut to leave one attempt's time, which the re-read then finds too short.
        subject.replace_rejected(old)
    assert clock.slept == [pytest.approx(0.3 - MIN_ATTEMPT_SECONDS)]


@pytest.mark.usefixtures("high")
def test_the_rejection_jitter_is_at_most_its_constant() -> None:
    clock = Clock()
    subject = make(Secrets(token("old"), token("new")), Refresher(SKIPPED), clock)
    assert subject.replace_rejected(subject.usable_token()).value == "new"
    assert clock.slept == [REJECTED_REREAD_JITTER_SECONDS]


@pytest.mark.usefixtures("low")
def test_a_rejection_without_a_refresher_says_so() -> None:
    clock = Clock()
    subject = make(Secrets(token("old")), None, clock)
    with pytest.raises(TokenRejectedError) as caught:
        subject.replace_rejected(subject.usable_token())
    assert str(caught.value) == "token rejected and on-demand refresh is off (TOKEN_REFRESHER_FUNCTION)"


@pytest.mark.usefixtures("low")
def test_a_refresher_that_keeps_the_rejected_token_is_a_cooldown() -> None:
    clock = Clock()
    refresher = Refresher(SKIPPED)
    subject = make(Secrets(token("old")), refresher, clock)
    old = subject.usable_token()
    with pytest.raises(TokenRejectedError) as caught:
        subject.replace_rejected(old)
    assert str(caught.value) == "the refresher kept the rejected token (cooldown)"
    assert refresher.calls == [("rejected", old.fingerprint)]


@pytest.mark.usefixtures("low")
def test_a_busy_refresher_that_leaves_the_rejected_token_is_asked_again() -> None:
    clock = Clock()
    refresher = Refresher(BUSY)
    subject = make(Secrets(token("old")), refresher, clock)
    old = subject.usable_token()
    with pytest.raises(TokenUnavailableError) as caught:
        subject.replace_rejected(old)
    assert len(refresher.calls) == BUSY_ATTEMPTS
    assert str(caught.value) == (
        "no valid token after asking the refresher (rejected): the refresher did not produce a token"
    )


# --- read-your-write -------------------------------------------------------------------------------------------


def test_the_secret_is_re_read_with_doubling_delays_until_it_shows_the_reported_token() -> None:
    clock = Clock()
    reported = token("reported")
    refresher = Refresher(RefreshAnswer(RefreshResult.REFRESHED, reported.fingerprint))
    subject = make(Secrets(None, token("lagging")), refresher, clock)
    with pytest.raises(TokenUnavailableError) as caught:
        subject.usable_token()
    assert clock.slept == [READ_YOUR_WRITE_BASE_DELAY_SECONDS * 2**n for n in range(READ_YOUR_WRITE_ATTEMPTS - 1)]
    assert str(caught.value) == (
        f"the refresher reported token {reported.fingerprint} but the token secret still holds token "
        f"{token('lagging').fingerprint} after {READ_YOUR_WRITE_ATTEMPTS} reads (a replica or cache lagging behind)"
    )


def test_a_secret_with_no_usable_token_after_a_refresh_says_what_it_holds(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    reported = token("reported")
    subject = make(Secrets(None), Refresher(RefreshAnswer(RefreshResult.REFRESHED, reported.fingerprint)), clock)
    with caplog.at_level(logging.INFO, logger="usage_engine.recovery"), pytest.raises(TokenUnavailableError) as caught:
        subject.usable_token()
    assert "still holds no usable token (token secret token is missing) after" in str(caught.value)
    rereads = [r for r in caplog.records if r.getMessage() == "Re-read the token secret after a refresh"]
    assert [(r.expected_fingerprint, r.token_fingerprint, r.read) for r in rereads] == [  # type: ignore[attr-defined]
        (reported.fingerprint, None, n + 1) for n in range(READ_YOUR_WRITE_ATTEMPTS)
    ]


def test_a_re_read_goes_ahead_with_exactly_the_time_for_its_delay_and_an_attempt() -> None:
    clock = Clock()
    reported = token("reported")
    refresher = Refresher(RefreshAnswer(RefreshResult.REFRESHED, reported.fingerprint))
    subject = make(Secrets(None, token("lagging")), refresher, clock)
    with (
        deadline_scope(Deadline(READ_YOUR_WRITE_BASE_DELAY_SECONDS + MIN_ATTEMPT_SECONDS, clock)),
        pytest.raises(DeadlineExceededError) as caught,
    ):
        subject.usable_token()
    assert clock.slept == [READ_YOUR_WRITE_BASE_DELAY_SECONDS]
    assert caught.value.what == f"waiting for the token secret to show token {reported.fingerprint}"


def test_a_re_read_delay_that_would_end_past_the_deadline_is_not_started() -> None:
    clock = Clock()
    reported = token("reported")
    refresher = Refresher(RefreshAnswer(RefreshResult.REFRESHED, reported.fingerprint))
    subject = make(Secrets(None, token("lagging")), refresher, clock)
    with deadline_scope(Deadline(READ_YOUR_WRITE_BASE_DELAY_SECONDS, clock)), pytest.raises(DeadlineExceededError):
        subject.usable_token()
    assert clock.slept == []


def test_a_requester_may_answer_with_a_bare_result() -> None:
    class Bare:
        def request(self, reason: RefreshReason, token_fingerprint: str | None = None) -> Any:
            return "skipped"

    clock = Clock()
    provider = TokenProvider(TokenStore(SecretsManagerSecret(Secrets(None, token("t")), "token")), clock=clock)  # type: ignore[arg-type]
    assert TokenRecovery(provider, Bare(), sleep=clock.sleep, clock=clock).usable_token().value == "t"


def test_a_call_refused_while_holding_off_is_logged_with_the_time_left(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    subject = make(Secrets(None), Refresher(SKIPPED), clock)
    subject._hold_off_until = 0.4444
    with caplog.at_level(logging.WARNING, logger="usage_engine.recovery"), pytest.raises(RefreshHoldOffError):
        subject.usable_token()
    (record,) = [
        r for r in caplog.records if r.getMessage() == "Holding off on-demand refreshes: no token for this call"
    ]
    assert (record.reason, record.retry_after_seconds) == ("expired", 0.4)  # type: ignore[attr-defined]
