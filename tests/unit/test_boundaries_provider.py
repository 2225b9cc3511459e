"""TokenProvider at its edges, single-threaded and deterministic: the warm path takes no lock, a token another
caller loaded while this one waited for the lock is used as it is, peek honours the skew, and a flight that
ended without an outcome is an error that names the secret."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

import pytest

from tests.unit.test_provider import NOW, Clock, FakeSecretsManager, provider_over, token
from usage_engine import TokenProvider, TokenUnavailableError, encode_token
from usage_engine.provider import _Flight
from usage_engine.settings import DEFAULT_TOKEN_EXPIRY_SKEW_SECONDS

SKEW = DEFAULT_TOKEN_EXPIRY_SKEW_SECONDS


class CountingLock:
    """A threading.Lock that counts its acquisitions and can run something just before the first one (what
    another thread would have done while this one waited)."""

    def __init__(self, before_first: Any = None) -> None:
        self._lock = threading.Lock()
        self.acquired = 0
        self._before_first = before_first

    def __enter__(self) -> bool:
        if self.acquired == 0 and self._before_first is not None:
            self._before_first()
        self.acquired += 1
        return self._lock.__enter__()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._lock.__exit__(kind, error, traceback)


def warm_provider(fake: FakeSecretsManager, clock: Clock) -> TokenProvider:
    provider = provider_over(fake, clock, skew=SKEW)
    provider.get()
    return provider


def test_a_warm_get_takes_no_lock_and_reads_nothing() -> None:
    fake = FakeSecretsManager(encode_token(token("tok-1", NOW + 3600)))
    provider = warm_provider(fake, Clock(NOW))
    lock = CountingLock()
    provider._lock = lock  # type: ignore[assignment]
    assert provider.get().value == "tok-1"
    assert (lock.acquired, fake.reads) == (0, 1)


def test_a_token_loaded_while_waiting_for_the_lock_is_used_without_a_read() -> None:
    fake = FakeSecretsManager(encode_token(token("tok-stored", NOW + 3600)))
    provider = provider_over(fake, Clock(NOW), skew=SKEW)
    loaded_meanwhile = token("tok-meanwhile", NOW + 3600)

    def another_caller_loaded() -> None:
        provider._cached = loaded_meanwhile

    provider._lock = CountingLock(another_caller_loaded)  # type: ignore[assignment]
    assert provider.get() is loaded_meanwhile
    assert fake.reads == 0


def test_peek_returns_the_cached_token_only_while_usable_with_the_skew() -> None:
    clock = Clock(NOW)
    fake = FakeSecretsManager(encode_token(token("tok-1", NOW + 3600)))
    provider = provider_over(fake, clock, skew=SKEW)
    assert provider.peek() is None
    cached = provider.get()
    assert provider.peek() is cached
    clock.now = NOW + 3600 - SKEW - 0.5
    assert provider.peek() is cached
    clock.now = NOW + 3600 - SKEW
    assert provider.peek() is None
    assert fake.reads == 1


def test_the_default_skew_is_the_settings_default() -> None:
    clock = Clock(NOW)
    fake = FakeSecretsManager(encode_token(token("tok-1", NOW + 3600)))
    provider = TokenProvider(provider_over(fake, clock)._store, clock=clock)
    provider.get()
    clock.now = NOW + 3600 - DEFAULT_TOKEN_EXPIRY_SKEW_SECONDS
    with pytest.raises(TokenUnavailableError, match=f"expires within {DEFAULT_TOKEN_EXPIRY_SKEW_SECONDS} s"):
        provider.get()


def test_a_flight_that_ended_without_a_token_or_an_error_names_the_secret() -> None:
    fake = FakeSecretsManager(encode_token(token("tok-1", NOW + 3600)))
    provider = provider_over(fake, Clock(NOW), skew=SKEW)
    ended = _Flight()
    ended.done.set()
    provider._flight = ended
    with pytest.raises(TokenUnavailableError) as caught:
        provider.get()
    assert str(caught.value) == "reading token secret token did not finish"
    assert fake.reads == 0


def test_a_stored_token_within_the_skew_is_refused_and_not_cached() -> None:
    clock = Clock(NOW)
    fake = FakeSecretsManager(encode_token(token("tok-1", NOW + SKEW)))
    provider = provider_over(fake, clock, skew=SKEW)
    with pytest.raises(TokenUnavailableError) as caught:
        provider.get()
    assert str(caught.value) == f"stored token {token('tok-1', NOW).fingerprint} expired or expires within {SKEW} s"
    assert provider.peek() is None
    fake.value = encode_token(token("tok-1", NOW + SKEW + 1))
    assert provider.get().value == "tok-1"
