"""`mutmut` as tools/mutation.py runs it (in .venv/mutation, from the staging folder): mutmut's own command
line, with a mutant's tests handed to the fork server fastest first.

mutmut's plain fork runner sorts a mutant's tests by their measured duration, its fork server (which the
mutation run needs, see tools/mutation.py) passes them in set order. The tests run with `-x`, so a killed
mutant costs the tests before the first that fails it: with a 3 s property test anywhere in that order most
kills would wait for it."""

from __future__ import annotations

import importlib
import sys
from typing import Any


def main() -> None:
    cli = importlib.import_module("mutmut.__main__").cli
    isolation = importlib.import_module("mutmut.workers.isolation")
    state = importlib.import_module("mutmut.state").state
    submit = isolation.ForkServerRunner.submit

    def submit_fastest_first(self: Any, mutant_name: str, tests: list[str], *args: Any) -> None:
        durations = state().duration_by_test
        submit(self, mutant_name, sorted(tests, key=lambda test: (durations.get(test, 0.0), test)), *args)

    isolation.ForkServerRunner.submit = submit_fastest_first
    sys.argv[0] = "mutmut"
    cli()


if __name__ == "__main__":
    main()
