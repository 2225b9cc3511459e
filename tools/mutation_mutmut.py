"""`mutmut` as tools/mutation.py runs it (in .venv/mutation, from the staging folder): mutmut's own command
line, with two changes to its fork server (which the mutation run needs, see tools/mutation.py) that more than
halve the run's time and change no verdict:

- A mutant's tests are handed over fastest first. mutmut's plain fork runner sorts them by their measured
  duration, its fork server passes them in set order; the tests run with `-x`, so a killed mutant costs the
  tests before the first that fails it, and a 3 s property test anywhere in that order would be paid by most.
- The fork server freezes its heap (gc.freeze) once it has collected the tests. pytest ends every run with
  full garbage collections, which otherwise walk everything the fork server imported: about 0.15 s of every
  mutant's 0.25 s of pytest overhead on this machine."""

from __future__ import annotations

import gc
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

    runner_class = importlib.import_module("mutmut.runners.harness").PytestRunner
    warm_up = runner_class.warm_up

    def warm_up_then_freeze(self: Any) -> None:
        warm_up(self)
        gc.freeze()

    runner_class.warm_up = warm_up_then_freeze
    sys.argv[0] = "mutmut"
    cli()


if __name__ == "__main__":
    main()
