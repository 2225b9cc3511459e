"""`python -m local.simulation day` (`make day`) prints the simulated day's report."""

from __future__ import annotations

import sys

from local.simulation.day import run_day


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] != ["day"]:
        print("usage: python -m local.simulation day", file=sys.stderr)
        return 2
    print(run_day().render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
