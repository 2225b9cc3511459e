"""TokenProvider's cache with an injected clock and a fake Secrets Manager client at the boundary."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from usage_engine import AccessToken, TokenProvider, TokenStore, TokenUnavailableError, encode_token
from usage_engine.secrets_manager import SecretsManagerSecret

NOW = 1_800_000_000.0


class FakeSecretsManager:
    """Stands in for the boto3 client: counts GetSecretValue, optionally slow to expose races."""

    def __init__(self, value: str | None, delay: float = 0.0) -> None:
        self.value = value
        self.delay = delay
        self.reads = 0
        self._lock = threading.Lock()

    def get_secret_value(self, SecretId: str) -> dict[str, Any]:  # noqa: N803 - boto3's spelling
        with self._lock:
            self.reads += 1
        time.sleep(self.delay)
        if self.value is None:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "ResourceNotFoundException"}}, "GetSecretValue")
        return {"SecretString": self.value}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def token(value: str, expires_at: float) -> AccessToken:
    return AccessToken(value=value, expires_at=int(expires_at), issued_at=int(NOW) - 100)


def provider_over(fake: FakeSecretsManager, clock: Clock, skew: int = 60) -> TokenProvider:
    store = TokenStore(SecretsManagerSecret(fake, "token"))  # type: ignore[arg-type]
    return TokenProvider(store, clock=clock, expiry_skew_seconds=skew)


def test_cached_until_skew_before_expiry() -> None:
    fake = FakeSecretsManager(encode_token(token("tok-1", NOW + 3600)))
    clock = Clock(NOW)
    provider = provider_over(fake, clock)
    for _ in range(1000):
        assert provider.get().value == "tok-1"
    assert fake.reads == 1
    clock.now = NOW + 3600 - 61
    provider.get()
    assert fake.reads == 1
    # Inside the skew window the cache is stale: the next get re-reads the secret.
    fake.value = encode_token(token("tok-2", NOW + 7200))
    clock.now = NOW + 3600 - 59
    assert provider.get().value == "tok-2"
    assert fake.reads == 2


def test_concurrent_cold_callers_share_one_read() -> None:
    fake = FakeSecretsManager(encode_token(token("tok-1", NOW + 3600)), delay=0.05)
    provider = provider_over(fake, Clock(NOW))
    results: list[str] = []
    barrier = threading.Barrier(32)

    def call() -> None:
        barrier.wait()
        results.append(provider.get().value)

    threads = [threading.Thread(target=call) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["tok-1"] * 32
    assert fake.reads == 1


def test_invalidate_drops_only_that_token() -> None:
    fake = FakeSecretsManager(encode_token(token("tok-1", NOW + 3600)))
    provider = provider_over(fake, Clock(NOW))
    first = provider.get()
    assert not provider.invalidate("some-older-token")
    provider.get()
    assert fake.reads == 1
    assert provider.invalidate(first)
    fake.value = encode_token(token("tok-2", NOW + 3600))
    assert provider.get().value == "tok-2"
    assert fake.reads == 2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "missing"),
        ("{not json", "unreadable"),
        (encode_token(token("tok-old", NOW + 30)), "expire"),
    ],
)
def test_unavailable_token_is_a_typed_error(value: str | None, message: str) -> None:
    provider = provider_over(FakeSecretsManager(value), Clock(NOW))
    with pytest.raises(TokenUnavailableError, match=message) as caught:
        provider.get()
    assert "tok-old" not in str(caught.value)


class GatedSecretsManager:
    """GetSecretValue blocks until released, then fails with throttling: a leader's read that waiters share."""

    def __init__(self) -> None:
        self.reads = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def get_secret_value(self, SecretId: str) -> dict[str, Any]:  # noqa: N803 - boto3's spelling
        from botocore.exceptions import ClientError

        self.reads += 1
        self.entered.set()
        assert self.release.wait(30), "the test never released the read"
        raise ClientError({"Error": {"Code": "ThrottlingException"}}, "GetSecretValue")


def _waiting_on(provider: TokenProvider, count: int) -> bool:
    flight = provider._flight
    # CPython's Event keeps its waiters on a Condition: wait (bounded) until every waiter is parked there.
    return flight is not None and len(flight.done._cond._waiters) >= count  # type: ignore[attr-defined]


def test_waiters_share_the_leaders_failed_read_instead_of_repeating_it() -> None:
    from usage_engine import SecretStoreError

    secrets = GatedSecretsManager()
    provider = TokenProvider(TokenStore(SecretsManagerSecret(secrets, "token")), clock=Clock(NOW))  # type: ignore[arg-type]
    errors: list[BaseException] = []

    def call() -> None:
        try:
            provider.get()
        except SecretStoreError as error:
            errors.append(error)

    leader = threading.Thread(target=call)
    leader.start()
    assert secrets.entered.wait(30)
    waiters = [threading.Thread(target=call) for _ in range(4)]
    for thread in waiters:
        thread.start()
    for _ in range(3000):  # a bounded wait for a state, not a timing assertion
        if _waiting_on(provider, 4):
            break
        time.sleep(0.01)
    assert _waiting_on(provider, 4)
    secrets.release.set()
    for thread in [leader, *waiters]:
        thread.join(30)

    assert secrets.reads == 1
    assert len(errors) == 5
    assert all(error.code == "ThrottlingException" for error in errors)  # type: ignore[attr-defined]
    assert provider._flight is None  # the next call reads again


def test_after_a_shared_failure_the_next_call_reads_again() -> None:
    secrets = FakeSecretsManager(None)
    provider = TokenProvider(TokenStore(SecretsManagerSecret(secrets, "token")), clock=Clock(NOW))  # type: ignore[arg-type]
    for expected_reads in (1, 2):
        with pytest.raises(TokenUnavailableError, match="missing"):
            provider.get()
        assert secrets.reads == expected_reads
