"""Section 1: one warm token read, against Powertools' cached read and a raw GetSecretValue."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from benchmarks.harness import environment
from benchmarks.report import Section, Target, fmt_us, table

SECRET_ID = "bench/token"


def per_call_ns(call: Callable[[], object], count: int) -> list[int]:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(count):
        started = clock()
        call()
        samples.append(clock() - started)
    return samples


def percentile(samples: list[int], fraction: float) -> float:
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))])


def bench_warm_reads(quick: bool) -> Section:
    from aws_lambda_powertools.utilities import parameters

    from local.moto_server import MotoServer
    from usage_engine import AccessToken, Components, ConsumerSettings, encode_token

    section = Section("1. Warm token read")
    hits, raw_calls, rounds = (20_000, 100, 3) if quick else (200_000, 600, 5)
    with MotoServer() as aws, environment(aws.environment()):
        aws.reset()  # moto's backends are per process: start empty
        container = Components()
        # The layer's own client (its Config): the raw read below is what a cache miss costs the layer.
        client = container.secrets_manager()
        now = int(time.time())
        token = AccessToken(value=f"bench.{now}.token", expires_at=now + 3600, issued_at=now)
        client.create_secret(Name=SECRET_ID, SecretString=encode_token(token))
        provider = container.provider(ConsumerSettings(token_secret_id=SECRET_ID))
        provider.get()
        parameters.get_secret(SECRET_ID)  # fills Powertools' cache (default max_age: 300 s)
        samples: dict[str, list[int]] = {"layer": [], "powertools": [], "raw": [], "timer": []}
        for _ in range(rounds):  # interleaved rounds, so drift on a noisy machine hits all alike
            samples["timer"] += per_call_ns(lambda: None, hits // rounds)
            samples["layer"] += per_call_ns(provider.get, hits // rounds)
            samples["powertools"] += per_call_ns(lambda: parameters.get_secret(SECRET_ID), hits // rounds)
            samples["raw"] += per_call_ns(lambda: client.get_secret_value(SecretId=SECRET_ID), raw_calls // rounds)
    median = {name: statistics.median(values) for name, values in samples.items()}
    p99 = {name: percentile(values, 0.99) for name, values in samples.items()}
    rows = [
        ["`TokenProvider.get()` (this layer, cache hit)", fmt_us(median["layer"]), fmt_us(p99["layer"]), "1"],
        [
            "Powertools `get_secret()` (cache hit, default max_age)",
            fmt_us(median["powertools"]),
            fmt_us(p99["powertools"]),
            f"{median['powertools'] / median['layer']:.1f}",
        ],
        [
            "raw `GetSecretValue` (boto3 → moto server, loopback HTTP)",
            fmt_us(median["raw"]),
            fmt_us(p99["raw"]),
            f"{median['raw'] / median['layer']:,.0f}",
        ],
        ["(timer overhead: an empty call)", fmt_us(median["timer"]), fmt_us(p99["timer"]), ""],
    ]
    section.add(
        f"Per call, {hits:,} cache hits and {raw_calls} raw calls in {rounds} interleaved rounds; times include "
        "the timer's own overhead (last row).",
        "",
        *table(["read", "median", "p99", "x this layer (median)"], rows),
    )
    layer_vs_pt = median["layer"] / median["powertools"]
    raw_vs_layer = median["raw"] / median["layer"]
    section.targets += [
        Target("warm read ≤ Powertools cached read (ratio ≤ 1.0)", f"{layer_vs_pt:.2f}", layer_vs_pt <= 1.0),
        Target("warm read ≥ 100x faster than raw GetSecretValue", f"{raw_vs_layer:,.0f}x", raw_vs_layer >= 100),
    ]
    return section
