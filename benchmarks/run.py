"""`make bench`: measure the bundle against the alternatives users would pick, and simulate it at fleet scale.

Writes benchmarks/RESULTS.md (see benchmarks/README.md for what each figure means). Everything runs on this
machine: moto's server for AWS, the Usage Engine emulator on loopback, and the discrete-event simulation of
`local.simulation` (the real layer code on a virtual clock) for anything measured per hour or per fleet.

    python -m benchmarks.run [--quick] [--output benchmarks/RESULTS.md]
        [--only warm,reads,idp,cold,throughput,fleet,semantics]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.cold_start import bench_cold
from benchmarks.fleet import bench_fleet
from benchmarks.read_strategies import bench_reads
from benchmarks.refresh_rate import bench_idp
from benchmarks.report import Section, publish, render
from benchmarks.semantics import bench_semantics
from benchmarks.throughput import bench_throughput
from benchmarks.token_reads import bench_warm_reads

# In report order: RESULTS.md's section numbers follow it.
BENCHES: dict[str, Callable[[bool], Section]] = {
    "warm": bench_warm_reads,
    "reads": bench_reads,
    "idp": bench_idp,
    "cold": bench_cold,
    "throughput": bench_throughput,
    "fleet": bench_fleet,
    "semantics": bench_semantics,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in seconds")
    parser.add_argument("--output", type=Path, default=None, help="write the markdown report here")
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated: " + ",".join(BENCHES))
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")
    sections = []
    started = time.perf_counter()
    for name in names:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        section_started = time.perf_counter()
        section = BENCHES[name](args.quick)
        section.seconds = time.perf_counter() - section_started
        sections.append(section)
        print(f"[bench] {name}: {section.seconds:.1f} s", file=sys.stderr, flush=True)
    publish(render(sections, args.quick, time.perf_counter() - started), args.output)
    # Missed targets are reported, not failed: the report is the product.
    return 0


if __name__ == "__main__":
    sys.exit(main())
