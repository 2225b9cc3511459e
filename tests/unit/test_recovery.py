"""TokenRecovery with fakes at the boundary (the token secret, the refresher) on an injected clock: hold-off
after a failed on-demand refresh, read-your-write after a refresh, and the busy loop under a deadline."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

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
    encode_token,
)
from usage_engine.deadline import Deadline, deadline_scope
from usage_engine.recovery import BUSY_ATTEMPTS, READ_YOUR_WRITE_ATTEMPTS, REFRESH_HOLD_OFF_SECONDS
from usage_engine.secrets_manager import SecretsManagerSecret
from usage_engine.states import RefreshReason, RefreshResult

NOW = 1_800_000_000.0


class Clock:
    """Wall and monotonic time in one: sleeping moves it."""

    def __init__(self) -> None:
        self.now = NOW
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.slept.append(seconds)
        self.now += seconds


def token(value: str, *, expires_in: float = 3600) -> AccessToken:
    return AccessToken(value=value, expires_at=int(NOW + expires_in), issued_at=int(NOW))


class Secrets:
    """The token secret: a list of values served in turn (the last one repeats)."""

    def __init__(self, *values: AccessToken | None) -> None:
        self.values = list(values)
        self.reads = 0

    def get_secret_value(self, SecretId: str) -> dict[str, Any]:  # noqa: N803 - boto3's spelling
        self.reads += 1
        value = self.values[0] if len(self.values) == 1 else self.values.pop(0)
        if value is None:
            raise ClientError({"Error": {"Code": "ResourceNotFoundException"}}, "GetSecretValue")
        return {"SecretString": encode_token(value)}


class Refresher:
    def __init__(self, *answers: RefreshAnswer | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, str | None]] = []

    def request(self, reason: RefreshReason, token_fingerprint: str | None = None) -> RefreshAnswer:
        self.calls.append((str(reason), token_fingerprint))
        answer = self.answers[0] if len(self.answers) == 1 else self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def recovery(secrets: Secrets, refresher: Refresher | None, clock: Clock) -> TokenRecovery:
    provider = TokenProvider(TokenStore(SecretsManagerSecret(secrets, "token")), clock=clock)  # type: ignore[arg-type]
    return TokenRecovery(provider, refresher, sleep=clock.sleep, clock=clock)


def test_a_failed_refresh_holds_off_with_no_reads_and_no_invokes_until_the_window_ends() -> None:
    clock = Clock()
    secrets = Secrets(token("expired", expires_in=-10))
    refresher = Refresher(RefreshUnavailableError("the token refresher failed: RefreshFailedError"))
    subject = recovery(secrets, refresher, clock)

    with pytest.raises(RefreshUnavailableError):
        subject.usable_token()
    assert (secrets.reads, len(refresher.calls)) == (1, 1)

    for _ in range(20):  # the calls of one hold-off window: typed, retryable, no I/O at all
        with pytest.raises(RefreshHoldOffError) as caught:
            subject.usable_token()
        assert 0 < caught.value.retry_after_seconds <= REFRESH_HOLD_OFF_SECONDS
    assert (secrets.reads, len(refresher.calls)) == (1, 1)

    clock.now += REFRESH_HOLD_OFF_SECONDS  # the window (50-100% of it) is over: one probe
    with pytest.raises(RefreshUnavailableError):
        subject.usable_token()
    assert (secrets.reads, len(refresher.calls)) == (2, 2)


def test_the_hold_off_still_serves_a_cached_usable_token_and_probes_when_the_window_ends() -> None:
    clock = Clock()
    good = token("good")
    secrets = Secrets(None)
    refresher = Refresher(RefreshUnavailableError("down"))
    subject = recovery(secrets, refresher, clock)
    with pytest.raises(RefreshUnavailableError):
        subject.usable_token()
    secrets.values = [good]  # the schedule stored a token meanwhile
    with pytest.raises(RefreshHoldOffError):
        subject.usable_token()
    clock.now += REFRESH_HOLD_OFF_SECONDS
    assert subject.usable_token() == good
    assert subject.usable_token() == good  # now cached
    assert secrets.reads == 2


def test_after_a_refresh_the_secret_is_re_read_until_it_shows_the_reported_token() -> None:
    clock = Clock()
    old, new = token("old-token"), token("new-token")
    # Reads: the first call, the re-read after the 401, one more stale read after the refresh (a lagging
    # replica), then the new token.
    secrets = Secrets(old, old, old, new)
    refresher = Refresher(RefreshAnswer(RefreshResult.REFRESHED, new.fingerprint))
    subject = recovery(secrets, refresher, clock)
    assert subject.usable_token() == old
    clock.slept.clear()

    assert subject.replace_rejected(old) == new
    assert refresher.calls == [("rejected", old.fingerprint)]
    assert secrets.reads == 4
    assert len(clock.slept) == 1 + 1  # the jitter before the re-read, then one wait for the stale read


def test_a_secret_that_never_shows_the_reported_token_is_a_clear_error() -> None:
    clock = Clock()
    old, new = token("old-token"), token("new-token")
    secrets = Secrets(old)
    subject = recovery(secrets, Refresher(RefreshAnswer(RefreshResult.REFRESHED, new.fingerprint)), clock)
    subject.usable_token()
    with pytest.raises(TokenUnavailableError, match=f"reported token {new.fingerprint}.*still holds token"):
        subject.replace_rejected(old)
    assert secrets.reads == 1 + 1 + READ_YOUR_WRITE_ATTEMPTS


def test_the_cooldown_message_only_when_the_refresher_reports_the_rejected_token_itself() -> None:
    from usage_engine.errors import TokenRejectedError

    clock = Clock()
    old = token("old-token")
    subject = recovery(Secrets(old), Refresher(RefreshAnswer(RefreshResult.SKIPPED, old.fingerprint)), clock)
    subject.usable_token()
    with pytest.raises(TokenRejectedError, match="kept the rejected token"):
        subject.replace_rejected(old)


def test_the_busy_loop_never_sleeps_after_its_last_attempt() -> None:
    clock = Clock()
    refresher = Refresher(RefreshAnswer(RefreshResult.BUSY))
    subject = recovery(Secrets(None), refresher, clock)
    with pytest.raises(TokenUnavailableError, match="after asking the refresher"):
        subject.usable_token()
    assert len(refresher.calls) == BUSY_ATTEMPTS
    assert len(clock.slept) == BUSY_ATTEMPTS - 1


def test_the_busy_loop_stops_at_the_deadline_without_holding_off() -> None:
    clock = Clock()
    refresher = Refresher(RefreshAnswer(RefreshResult.BUSY))
    subject = recovery(Secrets(None), refresher, clock)
    with deadline_scope(Deadline.after(0.2, clock=clock)), pytest.raises(DeadlineExceededError):
        subject.usable_token()
    assert sum(clock.slept) <= 0.2
    assert not subject.holding_off()  # running out of time is not a failed refresh


def test_a_lagging_read_of_the_expired_token_is_read_again_not_a_failure() -> None:
    clock = Clock()
    expired, fresh = token("old-token", expires_in=-100), token("new-token")
    secrets = Secrets(expired, expired, fresh)  # the first call, then one lagging re-read after the refresh
    subject = recovery(secrets, Refresher(RefreshAnswer(RefreshResult.REFRESHED, fresh.fingerprint)), clock)
    assert subject.usable_token() == fresh
    assert secrets.reads == 3
    assert not subject.holding_off()
