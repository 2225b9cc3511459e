"""Section 2: Secrets Manager reads per container-hour, this layer against a TTL cache and no cache."""

from __future__ import annotations

from benchmarks.report import Section, Target, table

NAMES = {
    "layer": "this layer (`TokenProvider`)",
    "ttl-300s": "300 s TTL cache (Powertools `get_secret` default; the extension's maximum)",
    "no-cache": "no cache (GetSecretValue per invocation)",
}


def bench_reads(quick: bool) -> Section:
    from local.simulation import READ_STRATEGIES, reads_per_container_hour

    section = Section("2. Secrets Manager reads per container-hour")
    rates = (1, 10) if quick else (1, 10, 100)
    hours = 3.0 if quick else 7.0
    results = {(s, r): reads_per_container_hour(s, r, hours=hours) for s in READ_STRATEGIES for r in rates}
    rows = [[NAMES[s], *(f"{results[(s, r)]:,.2f}" for r in rates)] for s in READ_STRATEGIES]
    section.add(
        f"Simulated (real `TokenProvider`, real Powertools `SecretsProvider` cache on the virtual clock), one warm "
        f"container, {hours:g} h with the refresher on its 5-minute schedule; reads counted after the first hour.",
        "",
        *table(["strategy", *(f"{r}/s" for r in rates)], rows),
    )
    worst = max(results[("layer", r)] for r in rates)
    section.targets.append(
        Target(
            "≤ 2 Secrets Manager reads per container-hour at any invocation rate",
            f"{worst:.2f} (300 s TTL: {results[('ttl-300s', rates[0])]:.0f})",
            worst <= 2,
        )
    )
    return section
