"""Objects that live as long as the Lambda container, so warm invocations reuse them (caches, sessions)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class PerContainer(Generic[K, V]):
    """One value per key, created on first use. A lock (not functools.cache) so that threads starting at
    once share one instance: two TokenProviders would mean two reads and two caches."""

    def __init__(self, create: Callable[[K], V]) -> None:
        self._create = create
        self._values: dict[K, V] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> V:
        with self._lock:
            if key not in self._values:
                self._values[key] = self._create(key)
            return self._values[key]

    def set(self, key: K, value: V) -> None:
        """Put a value built elsewhere (tests inject a client with their own options)."""
        with self._lock:
            self._values[key] = value

    def clear(self) -> None:
        """Forget every value, as a new container would (tests)."""
        with self._lock:
            self._values.clear()
