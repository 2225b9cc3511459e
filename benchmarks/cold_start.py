"""Section 4: a cold start's share the code controls, per handler: the import in a fresh process on Lambda's Python
and the first invocation that follows it, for the layer built with and without Python 3.13 bytecode, next to the
same for an earlier commit (BENCH_BEFORE_REF) and to `import boto3` alone; and the built layer's size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.cold_start_build import Build, build, extract, install_runtime, lambda_python, tree_size
from benchmarks.cold_start_report import CLOCKS, Key, Measurements, Samples, describe
from benchmarks.cold_start_stack import (
    EXPECT,
    LAMBDA_ENV,
    LocalStack,
    event_file,
    function_environment,
    local_stack,
    timeout_of,
)
from benchmarks.harness import FUNCTIONS, ROOT
from benchmarks.report import Section

CHILD = Path(__file__).with_name("cold_start_child.py")
MARKER = "COLD_START "
DEFAULT_BEFORE_REF = "7dafc86"  # the last commit before the lean layer


def run_child(
    python: str,
    target: str,
    paths: list[Path],
    env: dict[str, str],
    event: Path,
    timeout: float,
    expect: str,
    cwd: Path,
) -> dict[str, Any]:
    """One fresh process (benchmarks/cold_start_child.py); its outcome, or why it gave none."""
    command = [python, str(CHILD), target, str(event), str(timeout), expect, *(str(p) for p in paths)]
    try:
        done = subprocess.run(  # noqa: S603 - our own interpreter and script
            command,
            env={"PATH": os.environ.get("PATH", ""), **env},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout + 120,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "timed out"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(MARKER):
            return dict(json.loads(line[len(MARKER) :]))
    last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return {"ok": False, "error": f"no result: {last[:200]}"}


class Runner:
    """Runs the variants' processes against the local stack; one environment per build and function."""

    def __init__(self, python: str, runtime: Path, stack: LocalStack, scratch: Path) -> None:
        self.python, self.runtime, self.stack, self.scratch = python, runtime, stack, scratch
        self._runs = 0

    def baseline(self) -> dict[str, Any]:
        return run_child(self.python, "boto3", [self.runtime], dict(LAMBDA_ENV), CHILD, 0, "", self.scratch)

    def invoke(self, built: Build, function: str, *, expect: str | None = None, fresh: bool = True) -> dict[str, Any]:
        """Import `function` as `built` ships it and invoke it once; `fresh` gives meter events of their own."""
        if built.shipped is None:
            return {"ok": False, "error": built.error}
        self._runs += 1
        return run_child(
            self.python,
            "app",
            [*built.sys_path(function), self.runtime],
            function_environment(self.stack, function, built.shipped, built.functions[function]),
            event_file(function, self._runs if fresh else -1, self.scratch),
            timeout_of(built.shipped, function),
            EXPECT[function] if expect is None else expect,
            self.scratch,
        )


def warm_up(runner: Runner, builds: list[Build]) -> str:
    """A fresh token in the token secret (the refresher's first run: no token yet), and one meter for the meter
    query to list; "" when done, else why not. The first build that can do it does."""
    errors = []
    for built in builds:
        outcome = runner.invoke(built, "token_refresher", expect="")
        if outcome.get("ok"):
            runner.invoke(built, "meter_events", fresh=False)
            return ""
        errors.append(f"{built.version}: {outcome.get('error')}")
    return "; ".join(errors) or "nothing built"


def bench_cold(quick: bool) -> Section:
    section = Section("4. Cold start: handler import and first invocation, before and after; layer size")
    runs = 3 if quick else 9
    found = lambda_python()
    python = found or sys.executable
    before_ref = os.environ.get("BENCH_BEFORE_REF", DEFAULT_BEFORE_REF)
    clock = os.environ.get("BENCH_COLD_CLOCK", "cpu")
    if clock not in CLOCKS:
        raise ValueError(f"BENCH_COLD_CLOCK must be one of {', '.join(CLOCKS)}, not {clock!r}")
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as directory:
        scratch = Path(directory)
        runtime_error = install_runtime(python, scratch / "runtime")
        before_error = extract(before_ref, scratch / "before-src")
        sources = {"after": ROOT} if before_error else {"after": ROOT, "before": scratch / "before-src"}
        builds = [
            build(version, source, scratch / f"{version}-{bytecode}", lambda_python=python if bytecode else None)
            for version, source in sources.items()
            for bytecode in (True, False)
        ]
        built = [b for b in builds if not b.error]
        samples: dict[Key, Samples] = {(b.version, b.bytecode, f): Samples() for b in built for f in FUNCTIONS}
        baseline = Samples()
        warm_error = "the runtime's packages could not be installed: " + runtime_error if runtime_error else ""
        if not runtime_error:
            with local_stack() as stack:
                runner = Runner(python, scratch / "runtime", stack, scratch)
                warm_error = warm_up(runner, built)
                for round_number in range(runs if not warm_error else 0):
                    print(f"[bench] cold: round {round_number + 1}/{runs}", file=sys.stderr, flush=True)
                    # Interleaved: a noisy moment hits every variant alike.
                    baseline.add(runner.baseline())
                    for b in built:
                        for function in FUNCTIONS:
                            samples[(b.version, b.bytecode, function)].add(runner.invoke(b, function))
        sizes = {
            (b.version, b.bytecode, logical_id): tree_size(layer, scratch / "layer.zip")
            for b in built
            for logical_id, layer in b.layers.items()
        }
    describe(
        section,
        Measurements(
            runs=runs,
            clock=clock,
            python=found,
            before_ref=before_ref,
            before_error=before_error,
            setup_error=warm_error,
            builds=builds,
            baseline=baseline,
            samples=samples,
            sizes=sizes,
        ),
    )
    return section
