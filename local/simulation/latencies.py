"""The services' latencies, drawn per call from the simulation's generator."""

from __future__ import annotations

import random
from dataclasses import dataclass


def uniform(rng: random.Random, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return low + (high - low) * rng.random()


@dataclass(frozen=True)
class Latencies:
    """Service latencies in seconds, drawn uniformly from each range."""

    secrets_get: tuple[float, float] = (0.008, 0.030)
    secrets_put: tuple[float, float] = (0.030, 0.080)
    lambda_invoke: tuple[float, float] = (0.010, 0.030)
    idp: tuple[float, float] = (0.080, 0.300)
    api: tuple[float, float] = (0.015, 0.060)
    # A consumer container's init (runtime start, imports) before its first invocation runs.
    cold_start: tuple[float, float] = (0.25, 0.45)
