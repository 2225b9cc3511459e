"""Section 4's figures: the fresh processes' samples, and the tables and targets made of them."""

from __future__ import annotations

import platform
import statistics
from dataclasses import dataclass, field
from typing import Any

from benchmarks.cold_start_build import LAMBDA_PYTHON_VERSION, Build, TreeSize
from benchmarks.harness import FUNCTIONS
from benchmarks.report import Section, Target, table

IMPORT_LIMIT = {True: 1.2, False: 1.6}  # x `import boto3`, by whether the layer was built with 3.13 bytecode
KEPT_FRACTION = 0.9  # of the import's saving that must still show in import + first invocation
MODE = {True: "built with Python 3.13 bytecode", False: "built without Python 3.13 (sources only)"}
SHORT_MODE = {True: "with bytecode", False: "without"}
CLOCKS = {
    "cpu": "CPU time of the process (`time.process_time`)",
    "wall": "wall-clock time (`time.perf_counter`)",
}

Key = tuple[str, bool, str]  # (version "after" | "before", built with bytecode, function)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class Series:
    """One clock's seconds over a variant's successful processes."""

    imports: list[float] = field(default_factory=list)
    invokes: list[float] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)  # per process, then the median: a cold start one process had

    def add(self, import_s: float, invoke_s: float | None) -> None:
        self.imports.append(import_s)
        if invoke_s is not None:
            self.invokes.append(invoke_s)
            self.totals.append(import_s + invoke_s)

    @property
    def import_s(self) -> float | None:
        return _median(self.imports)

    @property
    def invoke_s(self) -> float | None:
        return _median(self.invokes)

    @property
    def total_s(self) -> float | None:
        return _median(self.totals)


@dataclass
class Samples:
    """One variant's fresh processes: the successful ones timed on both clocks, the failed ones only counted."""

    cpu: Series = field(default_factory=Series)
    wall: Series = field(default_factory=Series)
    failures: list[str] = field(default_factory=list)

    def add(self, outcome: dict[str, Any]) -> None:
        """A child's outcome (benchmarks/cold_start_child.py): a failed invocation is not timed at all."""
        if not outcome.get("ok"):
            self.failures.append(str(outcome.get("error") or "failed"))
            return
        self.cpu.add(float(outcome["import_cpu_s"]), _seconds(outcome.get("invoke_cpu_s")))
        self.wall.add(float(outcome["import_s"]), _seconds(outcome.get("invoke_s")))


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass
class Measurements:
    runs: int
    clock: str  # which of CLOCKS the tables and targets use
    python: str | None  # Lambda's Python; None when none was found (the current interpreter ran instead)
    before_ref: str
    before_error: str  # why the earlier commit was not measured ("" when it was)
    setup_error: str  # why nothing was measured ("" when it was)
    builds: list[Build]
    baseline: Samples
    samples: dict[Key, Samples]
    sizes: dict[tuple[str, bool, str], TreeSize]  # (version, bytecode, layer logical ID)

    def series(self, version: str, bytecode: bool, function: str) -> Series:
        samples = self.samples.get((version, bytecode, function), Samples())
        return samples.cpu if self.clock == "cpu" else samples.wall

    @property
    def base(self) -> float | None:
        return (self.baseline.cpu if self.clock == "cpu" else self.baseline.wall).import_s

    @property
    def has_before(self) -> bool:
        return not self.before_error and any(b.version == "before" and not b.error for b in self.builds)


def ms(seconds: float | None) -> str:
    return "failed" if seconds is None else f"{seconds * 1000:,.0f} ms"


def ratio(seconds: float | None, baseline: float | None) -> float | None:
    return None if seconds is None or not baseline else seconds / baseline


def saved(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else before - after


def describe(section: Section, m: Measurements) -> None:
    if not m.python:
        section.add(
            f"**No Python {LAMBDA_PYTHON_VERSION} found** (`$LAMBDA_PYTHON`, `python{LAMBDA_PYTHON_VERSION}`, pyenv): "
            f'everything below ran on Python {platform.python_version()}, "with bytecode" is that Python\'s, and '
            "the targets are not measured.",
            "",
        )
    where = f"Python {LAMBDA_PYTHON_VERSION} (Lambda's version, `{m.python}`)" if m.python else "this Python"
    other = "wall" if m.clock == "cpu" else "cpu"
    section.add(
        f"Medians of {m.runs} fresh processes on {where}, run interleaved (the baseline, then every handler of "
        "every build, round after round). A process has the function's build folder, its layers and the "
        "runtime's packages on `sys.path` in Lambda's order (boto3 and its dependencies with bytecode, as "
        "Lambda's runtime has them), Lambda's variables and the function's from template.yaml "
        "(`PYTHONDONTWRITEBYTECODE=1`: Lambda cannot write `__pycache__` under the read-only `/opt` and "
        "`/var/task`). It imports `app`, then invokes `lambda_handler` once against moto's server and the Usage "
        "Engine emulator with a fresh token already in the token secret: the refresher's scheduled run (nothing "
        "to do), the batch of `events/meter-events-sqs.json` (meters of their own per run) and "
        "`events/meter-query-http-api.json`. A failed invocation is counted, never timed. The layer and the "
        "functions are built by their own Makefiles, once with `LAMBDA_PYTHON` set to that Python and once with "
        f"`LAMBDA_PYTHON=` (a build machine without Python {LAMBDA_PYTHON_VERSION}); *before* is the same for "
        f"commit `{m.before_ref}` (`BENCH_BEFORE_REF`). Times are the {CLOCKS[m.clock]}: on a shared machine it "
        "leaves out the time spent waiting for a CPU and for the emulators (`BENCH_COLD_CLOCK="
        f"{other}` for the {CLOCKS[other]}; the last column has it).",
        "",
    )
    if m.setup_error:
        section.add(f"**Not measured**: {m.setup_error}.", "")
    if not m.has_before:
        section.add(f"Before (`{m.before_ref}`): not measured ({m.before_error or 'its build failed'}).", "")
    foreign = sorted({layer for b in m.builds if b.shipped for layer in b.shipped.foreign})
    if foreign:
        section.add(f"Layers the template names but the stack does not build, left out: {', '.join(foreign)}.", "")
    for failed in (b for b in m.builds if b.error):
        section.add(f"Build failed ({failed.version}, {MODE[failed.bytecode]}): `{failed.error}`.", "")
    for bytecode in (True, False):
        section.add(f"Layer and functions {MODE[bytecode]}:", "", *_times_table(m, bytecode))
        failures = [
            f"{version} `{function}`: {len(s.failures)} of {m.runs} failed ({s.failures[0]})"
            for version in ("after", "before")
            for function in FUNCTIONS
            if (s := m.samples.get((version, bytecode, function), Samples())).failures
        ]
        if failures:
            section.add("Failed runs: " + "; ".join(failures) + ".", "")
    section.add(
        "The built layers' `python/` folders (zipped with deflate, as SAM uploads them):",
        "",
        *table(["code", "layer", "build", "unzipped", "zipped", "files", "of them bytecode"], _size_rows(m)),
    )
    section.targets += [_import_target(m, True), _import_target(m, False), _kept_target(m)]


def _times_table(m: Measurements, bytecode: bool) -> list[str]:
    other = "wall" if m.clock == "cpu" else "cpu"
    header = ["handler", "import", "x boto3", "first invocation", "import + first invocation"]
    rows: list[list[str]] = [["`import boto3` alone (the runtime's; the baseline)", ms(m.base), "1.00", "", ""]]
    for function in FUNCTIONS:
        after = m.series("after", bytecode, function)
        x = ratio(after.import_s, m.base)
        rows.append(
            [
                f"`{function}`",
                ms(after.import_s),
                "" if x is None else f"{x:.2f}",
                ms(after.invoke_s),
                ms(after.total_s),
            ]
        )
    if m.has_before:
        header += ["before: import (x boto3)", "before: import + first invocation", "saved: import", "saved: both"]
        rows[0] += ["", "", "", ""]
        for row, function in zip(rows[1:], FUNCTIONS, strict=True):
            after, before = m.series("after", bytecode, function), m.series("before", bytecode, function)
            x = ratio(before.import_s, m.base)
            row += [
                ms(before.import_s) + ("" if x is None else f" ({x:.2f})"),
                ms(before.total_s),
                ms(saved(before.import_s, after.import_s)),
                ms(saved(before.total_s, after.total_s)),
            ]
    # The other clock, so nothing is hidden: import, and import + first invocation (before → after).
    header.append(f"{other} clock: import; both" + (" (before → now)" if m.has_before else ""))
    baseline = m.baseline.wall if other == "wall" else m.baseline.cpu
    rows[0].append(ms(baseline.import_s))
    for row, function in zip(rows[1:], FUNCTIONS, strict=True):
        now, then = (m.samples.get((v, bytecode, function), Samples()) for v in ("after", "before"))
        now_series, then_series = (s.wall if other == "wall" else s.cpu for s in (now, then))
        then_import = f"{ms(then_series.import_s)} → " if m.has_before else ""
        then_total = f"{ms(then_series.total_s)} → " if m.has_before else ""
        row.append(f"{then_import}{ms(now_series.import_s)}; {then_total}{ms(now_series.total_s)}")
    return table(header, rows)


def _size_rows(m: Measurements) -> list[list[str | int]]:
    rows: list[list[str | int]] = []
    for (version, bytecode, logical_id), size in sorted(m.sizes.items(), key=lambda item: item[0][0] != "after"):
        rows.append(
            [
                "this tree" if version == "after" else f"before (`{m.before_ref}`)",
                f"`{logical_id}`",
                SHORT_MODE[bytecode] if bytecode else "without Python 3.13",
                f"{size.unzipped / 1e6:.1f} MB",
                f"{size.zipped / 1e6:.1f} MB",
                size.files,
                size.bytecode_files,
            ]
        )
    return rows


def _not_measured(m: Measurements) -> str:
    return "" if m.python else f"no Python {LAMBDA_PYTHON_VERSION} here: ran on {platform.python_version()}"


def _import_target(m: Measurements, bytecode: bool) -> Target:
    limit = IMPORT_LIMIT[bytecode]
    name = f"importing any handler as shipped, {MODE[bytecode]}: ≤ {limit}x `import boto3`"
    ratios = {f: ratio(m.series("after", bytecode, f).import_s, m.base) for f in FUNCTIONS}
    measured = [value for value in ratios.values() if value is not None]
    if len(measured) < len(ratios):
        missing = [f for f, value in ratios.items() if value is None]
        return Target(name, "failed: " + ", ".join(missing), False, _not_measured(m))
    listed = ", ".join(f"{f} {value:.2f}" for f, value in ratios.items() if value is not None)
    note = _not_measured(m)
    return Target(name, f"worst {max(measured):.2f}x ({listed})", None if note else max(measured) <= limit, note)


def _kept_target(m: Measurements) -> Target:
    name = (
        f"the first invocation keeps the import's saving over `{m.before_ref}`: import + first invocation saves "
        f"≥ {KEPT_FRACTION:.0%} of what the import saves (every handler, both builds)"
    )
    if not m.has_before:
        return Target(name, "not measured", None, m.before_error or "the earlier commit's build failed")
    checks: list[tuple[str, float, float]] = []  # (label, import saved, both saved)
    missing = []
    for bytecode in (True, False):
        for function in FUNCTIONS:
            after, before = m.series("after", bytecode, function), m.series("before", bytecode, function)
            label = f"{function} {SHORT_MODE[bytecode]}"
            imported, both = saved(before.import_s, after.import_s), saved(before.total_s, after.total_s)
            if imported is None or both is None:
                missing.append(label)
            else:
                checks.append((label, imported, both))
    if missing:
        return Target(name, "failed: " + ", ".join(missing), False, _not_measured(m))
    met = all(both >= KEPT_FRACTION * imported for _, imported, both in checks)
    measured = "; ".join(
        f"{label}: {imported * 1000:,.0f} → {both * 1000:,.0f} ms"
        + (f" ({both / imported:.0%})" if imported > 0 else "")
        for label, imported, both in checks
    )
    note = _not_measured(m)
    return Target(name, "saved (import → both) " + measured, None if note else met, note)
