"""Mutation testing of the layer and the three handlers against the fast tiers, and docs/mutation.md.

    .venv/mutation/bin/python -m tools.mutation                  # `make mutation`: every module, writes the doc
    .venv/mutation/bin/python -m tools.mutation --only token idp # a few modules; prints their table only
    .venv/mutation/bin/python -m tools.mutation --render-only    # the doc again from the last run's results

mutmut (3.x) names a mutant after its file's path and switches it on only where the running function's
`__module__` equals that name. The layer lives at layers/usage_engine/usage_engine but is imported as
`usage_engine`, and each handler is loaded by path as `lambda_function_<name>` (local/lambda_runtime.py), so
mutmut runs in a staging folder (.venv/mutation/stage) whose layout gives every file the name it is imported
by: `usage_engine/` and `lambda_function_<name>.py` (symbolic links to the sources), the tests and `local/`
beside them. Inside mutmut's copy (`mutants/`) the paths the tests and local/lambda_runtime.py open
(layers/usage_engine/usage_engine, functions/<name>/app.py) link to the mutated files, so whatever reads the
sources by path reads what runs.

Every survivor (a mutant no fast test fails, including those on lines the fast tiers never run) is listed in
the doc with its reason from tools/mutation_equivalent.toml, matched by module and the mutated line's text
before and after (stable across runs, unlike mutmut's numbered ids); one without a reason is "unexplained"
and the doc says the target is not met. The doc records a sha256 of the sources it measured;
tests/tools/test_mutation_doc.py fails when they change.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LAYER = ROOT / "layers" / "usage_engine" / "usage_engine"
FUNCTIONS = ROOT / "functions"
HANDLERS = ("meter_events", "meter_query", "token_refresher")
DOCUMENT = ROOT / "docs" / "mutation.md"
ANNOTATIONS = ROOT / "tools" / "mutation_equivalent.toml"
VENV = ROOT / ".venv" / "mutation"
STAGE = VENV / "stage"
# The acceptance bar: the layer as a whole and each of these modules.
TARGET_PERCENT = 90.0
CORE_MODULES = ("refresher", "token", "idp", "provider", "api_client", "metering", "meter_events")
# The fast tiers, exactly as `make unit` selects them.
TEST_SELECTION = ["-m", "unit or property", "tests/unit", "tests/property"]
# Hypothesis as the mutation run needs it (tools/mutation_hypothesis.py); no cache folder written by every run.
PLUGIN = "mutation_hypothesis"
PYTEST_ARGS = ["-p", PLUGIN, "-p", "no:cacheprovider"]
# What the tests need beside the sources (copied into mutants/ by mutmut, as it copies tests/).
ALSO_COPY = ("local", "events", "template.yaml", f"{PLUGIN}.py")
DIGEST_LINE = re.compile(r"^Sources measured: sha256:([0-9a-f]{64})", re.MULTILINE)
HANDLER_MODULE = re.compile(r"lambda_function_(\w+)")

# mutmut's exit codes of a mutant's test run (mutmut/stats.py), folded into the doc's columns. A mutant killed
# by the CPU-time limit (SIGXCPU, then SIGKILL) made the tests hang: the suite detects it, so it counts as
# killed, in its own column.
KILLED, TIMED_OUT, SURVIVED, NOT_RUN, NOT_CHECKED = "killed", "timed out", "survived", "not run", "not checked"
_STATUS_BY_EXIT_CODE: dict[int | None, str] = {
    1: KILLED,
    3: KILLED,  # pytest's internal error: the mutant broke the test run
    0: SURVIVED,
    5: NOT_RUN,  # pytest collected no test
    33: NOT_RUN,  # no fast test calls the mutated function
    34: SURVIVED,  # skipped (a pragma); listed like any survivor
    35: SURVIVED,  # "suspicious"
    36: TIMED_OUT,
    24: TIMED_OUT,
    -24: TIMED_OUT,
    152: TIMED_OUT,
    255: TIMED_OUT,
    -9: TIMED_OUT,
    -11: KILLED,
    None: NOT_CHECKED,
}


def status_of(exit_code: int | None) -> str:
    return _STATUS_BY_EXIT_CODE.get(exit_code, SURVIVED)


@dataclass(frozen=True)
class Source:
    """One measured file: where it is, the name mutmut and the tests know it by, and how the doc names it."""

    path: Path  # in the repository
    staged: str  # its path in the staging folder (and under mutants/)
    label: str  # the doc's name: the layer module (`token`) or the handler (`functions/meter_events/app.py`)
    handler: bool


def measured_sources(root: Path = ROOT) -> list[Source]:
    """Every module of the layer and the three handlers."""
    layer = root / LAYER.relative_to(ROOT)
    sources = [
        Source(path, f"usage_engine/{path.name}", path.stem, handler=False) for path in sorted(layer.glob("*.py"))
    ]
    for name in HANDLERS:
        path = root / "functions" / name / "app.py"
        sources.append(Source(path, f"lambda_function_{name}.py", f"functions/{name}/app.py", handler=True))
    return sources


def source_digest(root: Path = ROOT) -> str:
    """sha256 over the measured sources' paths and contents: the doc's results hold for exactly these."""
    digest = hashlib.sha256()
    for source in measured_sources(root):
        digest.update(source.path.relative_to(root).as_posix().encode("utf-8") + b"\0")
        digest.update(source.path.read_bytes() + b"\0")
    return digest.hexdigest()


def recorded_digest(document: str) -> str | None:
    match = DIGEST_LINE.search(document)
    return match.group(1) if match else None


# --- staging and running ---------------------------------------------------------------------------------


def _toml(value: Any) -> str:
    # JSON's strings and arrays of strings are TOML's basic strings and arrays: all this config needs.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float, list)):
        return json.dumps(value)
    raise TypeError(f"no TOML for {value!r}")


def stage_pyproject(only: Sequence[str] | None) -> str:
    """The staging folder's pyproject.toml: mutmut's settings, and the repository's pytest settings with the
    staging root (where `usage_engine` is) as the only import path."""
    pytest_options = dict(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"])
    ini = dict(pytest_options["ini_options"])
    ini["pythonpath"] = ["."]
    sources = measured_sources()
    mutmut: dict[str, Any] = {
        "source_paths": [source.staged for source in sources],
        "also_copy": list(ALSO_COPY),
        "pytest_add_cli_args_test_selection": TEST_SELECTION,
        "pytest_add_cli_args": PYTEST_ARGS,
        # The doc needs fresh verdicts; nothing is carried over from an earlier run's git state.
        "use_git_change_detection": False,
        # Every mutant's tests run in a process forked from one that has only collected them: a run of the
        # suite leaves process-wide state behind (logging handlers, the layer's per-container objects) that
        # would fail later runs whatever the mutant.
        "process_isolation": "forkserver",
        # A mutant's tests may take this many times their measured duration (plus 1 s) before it counts as
        # timed out (mutmut's default, 15, lets each mutant that deadlocks a thread hold a worker for minutes).
        # The durations are measured with every function traced, so the mutants' runs are faster than that.
        "timeout_multiplier": 5.0,
        # The fork server's log (mutants/mutmut-debug.log) has each mutant's time: what to look at when a run
        # gets slower.
        "log_to_file": True,
    }
    if only:
        mutmut["only_mutate"] = [source.staged for source in sources if source.label in only]
    lines = ["# Written by tools/mutation.py for its staging folder; not the repository's.", "[tool.mutmut]"]
    lines += [f"{key} = {_toml(value)}" for key, value in mutmut.items()]
    lines += ["", "[tool.pytest.ini_options]"]
    lines += [f"{key} = {_toml(value)}" for key, value in ini.items()]
    return "\n".join(lines) + "\n"


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))


def prepare_stage(only: Sequence[str] | None) -> None:
    """A fresh staging folder (earlier verdicts are never reused: the tests may have changed since)."""
    if STAGE.exists():
        shutil.rmtree(STAGE)
    STAGE.mkdir(parents=True)
    for source in measured_sources():
        _link(STAGE / source.staged, source.path)
    for name in ("tests", *ALSO_COPY):
        _link(STAGE / name, ROOT / "tools" / name if name == f"{PLUGIN}.py" else ROOT / name)
    (STAGE / "pyproject.toml").write_text(stage_pyproject(only), encoding="utf-8")
    mutants = STAGE / "mutants"
    # The paths the tests and local/lambda_runtime.py open, to the mutated files mutmut writes.
    _link(mutants / "layers" / "usage_engine" / "usage_engine", mutants / "usage_engine")
    for name in HANDLERS:
        _link(mutants / "functions" / name / "app.py", mutants / f"lambda_function_{name}.py")


def run_mutmut(max_children: int) -> None:
    env = {**os.environ, "AWS_DEFAULT_REGION": "eu-west-1"}
    # mutmut's command line with the fork server's test order patched (tools/mutation_mutmut.py), run as a
    # script: the repository root (with the original tests/ and local/) stays off the tests' import path.
    runner = ROOT / "tools" / "mutation_mutmut.py"
    command = [str(VENV / "bin" / "python"), str(runner), "run", "--max-children", str(max_children)]
    subprocess.run(command, cwd=STAGE, env=env, check=True)  # noqa: S603 - our venv's Python, fixed arguments


# --- results ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Survivor:
    label: str
    key: str  # mutmut's id, e.g. usage_engine.token.x__epoch__mutmut_7 (for `mutmut show` in the stage)
    status: str
    function: str
    line: int | None
    original: str
    mutant: str
    reason: str | None


@dataclass
class Tally:
    label: str
    handler: bool
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return self.counts.get(status, 0)

    @property
    def generated(self) -> int:
        return sum(self.counts.values())

    @property
    def detected(self) -> int:
        return self.count(KILLED) + self.count(TIMED_OUT)

    @property
    def score(self) -> float:
        return 100.0 * self.detected / self.generated if self.generated else 100.0


def _squash(text: str) -> str:
    return " ".join(text.split())


def _function_name(key: str) -> str:
    """`usage_engine.token.x__epoch__mutmut_7` -> `_epoch`; `...xǁTokenProviderǁget__mutmut_3` ->
    `TokenProvider.get`."""
    mangled = key.partition("__mutmut_")[0].rpartition(".")[2]
    if mangled.startswith("x_"):
        return mangled[2:]
    _, class_name, method = mangled.split("ǁ")
    return f"{class_name}.{method}"


def _definitions(source: str) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    """Top-level functions and methods by the names _function_name gives them."""
    found: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found[node.name] = node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    found[f"{node.name}.{item.name}"] = item
    return found


def _function_sources(staged: str) -> dict[str, list[str]]:
    """The generated functions of a mutated file by mangled name (mutmut's .spans index of its lines)."""
    mutated = STAGE / "mutants" / staged
    spans = json.loads((STAGE / "mutants" / f"{staged}.spans").read_text(encoding="utf-8"))["spans"]
    lines = mutated.read_text(encoding="utf-8").splitlines()
    return {name: lines[start - 1 : end] for name, (start, end) in spans.items()}


def describe_mutant(
    key: str, functions: Mapping[str, list[str]], definitions: Mapping[str, ast.AST]
) -> tuple[str, int | None, str, str]:
    """The mutated function, the source line, and the changed line(s) before and after."""
    mangled = key.rpartition(".")[2]
    base = mangled.partition("__mutmut_")[0]
    plain = _function_name(key).rpartition(".")[2]
    original = [line.replace(f"{base}__mutmut_orig", plain) for line in functions.get(f"{base}__mutmut_orig", [])]
    mutated = [line.replace(mangled, plain) for line in functions.get(mangled, [])]
    before: list[str] = []
    after: list[str] = []
    first: int | None = None
    matcher = difflib.SequenceMatcher(a=original, b=mutated, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        first = i1 if first is None else first
        before += original[i1:i2]
        after += mutated[j1:j2]
    function = _function_name(key)
    line = None
    definition = definitions.get(function)
    if definition is not None and first is not None:
        def_index = next((i for i, text in enumerate(original) if text.lstrip().startswith(("def ", "async def "))), 0)
        line = getattr(definition, "lineno", 0) + first - def_index
    return function, line, " / ".join(_squash(text) for text in before), " / ".join(_squash(text) for text in after)


@dataclass(frozen=True)
class Annotation:
    label: str
    original: str
    mutant: str
    reason: str


def load_annotations(path: Path = ANNOTATIONS) -> list[Annotation]:
    if not path.exists():
        return []
    entries = tomllib.loads(path.read_text(encoding="utf-8")).get("equivalent", [])
    # `mutant` is one mutated text or a list of them (several mutants of one line, one reason).
    return [
        Annotation(entry["module"], _squash(entry["original"]), _squash(mutant), entry["reason"])
        for entry in entries
        for mutant in ([entry["mutant"]] if isinstance(entry["mutant"], str) else entry["mutant"])
    ]


def reason_for(annotations: Iterable[Annotation], label: str, original: str, mutant: str) -> str | None:
    for annotation in annotations:
        if annotation.label == label and annotation.original == original and annotation.mutant == mutant:
            return annotation.reason
    return None


def collect(only: Sequence[str] | None = None) -> tuple[list[Tally], list[Survivor]]:
    annotations = load_annotations()
    tallies: list[Tally] = []
    survivors: list[Survivor] = []
    for source in measured_sources():
        if only and source.label not in only:
            continue
        meta = STAGE / "mutants" / f"{source.staged}.meta"
        if not meta.exists():
            raise SystemExit(f"no mutmut results for {source.staged}: run the mutation run first")
        codes: dict[str, int | None] = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        tally = Tally(source.label, source.handler)
        tallies.append(tally)
        if not codes:
            continue
        functions = _function_sources(source.staged)
        definitions = _definitions(source.path.read_text(encoding="utf-8"))
        for key, code in sorted(codes.items(), key=lambda item: _mutant_order(item[0])):
            status = status_of(code)
            if status == NOT_CHECKED:
                raise SystemExit(f"{key} was never run: the mutation run did not finish")
            tally.counts[status] = tally.count(status) + 1
            if status in (SURVIVED, NOT_RUN):
                function, line, before, after = describe_mutant(key, functions, definitions)
                reason = reason_for(annotations, source.label, before, after)
                survivors.append(Survivor(source.label, key, status, function, line, before, after, reason))
    return tallies, survivors


def _mutant_order(key: str) -> tuple[str, int]:
    name, _, number = key.rpartition("__mutmut_")
    return name, int(number) if number.isdigit() else 0


# --- the document ----------------------------------------------------------------------------------------


def _row(name: str, tally: Tally) -> str:
    columns = (tally.generated, tally.count(KILLED), tally.count(TIMED_OUT), tally.count(SURVIVED))
    cells = " | ".join(str(value) for value in columns)
    return f"| {name} | {cells} | {tally.count(NOT_RUN)} | {tally.score:.1f}% |"


def _total(label: str, tallies: Iterable[Tally]) -> Tally:
    total = Tally(label, handler=False)
    for tally in tallies:
        for status, count in tally.counts.items():
            total.counts[status] = total.count(status) + count
    return total


TABLE_HEAD = (
    "| module | generated | killed | timed out | survived | not run | score |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def render(
    tallies: Sequence[Tally], survivors: Sequence[Survivor], *, digest: str, seconds: float | None, workers: int
) -> str:
    layer = [tally for tally in tallies if not tally.handler]
    handlers = [tally for tally in tallies if tally.handler]
    layer_total = _total("layer", layer)
    unexplained = [survivor for survivor in survivors if survivor.reason is None]
    core = [tally for tally in layer if tally.label in CORE_MODULES]
    below = [tally.label for tally in [layer_total, *core] if tally.score < TARGET_PERCENT]
    met = not below and not unexplained
    verdict = (
        f"**Target met**: at least {TARGET_PERCENT:.0f}% of the layer's mutants and of each core module's are "
        "killed, and every survivor is explained."
        if met
        else "**Target not met**: "
        + "; ".join(
            part
            for part in (
                f"below {TARGET_PERCENT:.0f}%: {', '.join(below)}" if below else "",
                f"{len(unexplained)} unexplained survivor(s)" if unexplained else "",
            )
            if part
        )
        + "."
    )
    took = f" The run took {seconds / 60:.1f} minutes with {workers} parallel workers." if seconds else ""
    out = [
        "<!-- Generated by tools/mutation.py (`make mutation`). Do not edit by hand: explain a survivor in",
        "     tools/mutation_equivalent.toml, or kill it with a test, then run `make mutation`. -->",
        "",
        "# Mutation testing",
        "",
        "mutmut 3 changes one thing at a time in the layer's and the handlers' functions (an operator, a constant, a",
        "condition, an argument dropped...) and runs the fast tiers (`tests/unit` and `tests/property`, "
        '`-m "unit or property"`)',
        "against each such mutant, only the tests that call the mutated function. A mutant is **killed** when a test",
        "fails, **timed out** when the tests hang on it (also a detection), **survived** when every test passes,",
        "and **not run** when no fast test calls its function: a line the fast suite never runs counts as a",
        "survivor. Score: (killed + timed out) / generated. Module-level constants are not mutated (mutmut 3",
        "mutates function bodies); tests import them instead of repeating their values." + took,
        "",
        f"Sources measured: sha256:{digest}",
        "",
        "(every module of the layer and the three handlers; `tests/tools/test_mutation_doc.py` fails when they",
        "differ from what was measured: run `make mutation` before landing a change to them.)",
        "",
        verdict,
        "",
        "## The layer",
        "",
        TABLE_HEAD,
    ]
    out += [_row(f"`{tally.label}`", tally) for tally in layer]
    out += [_row("**all layer modules**", layer_total), ""]
    out += [f"Core modules (each at least {TARGET_PERCENT:.0f}%): {', '.join(f'`{m}`' for m in CORE_MODULES)}.", ""]
    out += ["## The handlers", "", TABLE_HEAD]
    out += [_row(f"`{tally.label}`", tally) for tally in handlers]
    out += [_row("**all handlers**", _total("handlers", handlers)), ""]
    out += [
        "## Survivors",
        "",
        "Each with why it changes no observable behaviour (tools/mutation_equivalent.toml); one without a reason",
        "is marked unexplained and fails the target.",
        "",
    ]
    if not survivors:
        out += ["None.", ""]
    for label in dict.fromkeys(survivor.label for survivor in survivors):
        out += [f"### `{label}`", ""]
        for survivor in (s for s in survivors if s.label == label):
            where = f"line {survivor.line}, " if survivor.line else ""
            status = " (not run)" if survivor.status == NOT_RUN else ""
            reason = survivor.reason or "**unexplained**"
            change = f"`{_code(survivor.original)}` → `{_code(survivor.mutant)}`"
            out.append(f"- {where}`{survivor.function}`{status}: {change}: {reason}")
        out.append("")
    return "\n".join(out)


def _code(text: str) -> str:
    # A list item, not a table cell: a "|" needs no escape (and a backslash would show in the code span).
    return text.replace("`", "'") or "(nothing)"


def print_table(tallies: Sequence[Tally], survivors: Sequence[Survivor]) -> None:
    print(TABLE_HEAD)
    for tally in tallies:
        print(_row(tally.label, tally))
    print(_row("total", _total("total", tallies)))
    for survivor in survivors:
        reason = survivor.reason or "UNEXPLAINED"
        print(f"{survivor.label}:{survivor.line} {survivor.function} [{survivor.status}] {survivor.key}")
        print(f"    {survivor.original}  ->  {survivor.mutant}  ({reason})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", nargs="+", metavar="MODULE", help="mutate only these (layer module names)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--render-only", action="store_true", help="no run: the doc from the last run's results")
    args = parser.parse_args(argv)
    if args.only:
        unknown = set(args.only) - {source.label for source in measured_sources()}
        if unknown:
            parser.error(f"not a measured module: {', '.join(sorted(unknown))}")
    record = STAGE / "run.json"
    if args.render_only:
        if not record.exists():
            parser.error("no mutation run to render: run without --render-only first")
        run = json.loads(record.read_text(encoding="utf-8"))
    else:
        started = time.monotonic()
        digest = source_digest()
        prepare_stage(args.only)
        run_mutmut(args.max_children)
        if source_digest() != digest:
            # The doc records what was measured (the sources at the start); the doc's test will call it stale.
            print("warning: the sources changed during the run: run it again", file=sys.stderr)
        run = {"digest": digest, "seconds": time.monotonic() - started, "workers": args.max_children}
        record.write_text(json.dumps(run), encoding="utf-8")
    tallies, survivors = collect(args.only)
    print_table(tallies, survivors)
    print(f"{sum(t.generated for t in tallies)} mutants in {run['seconds']:.0f} s with {run['workers']} workers")
    measured = {source.label for source in measured_sources()}
    if args.only and set(args.only) != measured:
        return 0
    DOCUMENT.write_text(
        render(tallies, survivors, digest=run["digest"], seconds=run["seconds"], workers=run["workers"]),
        encoding="utf-8",
    )
    print(f"wrote {DOCUMENT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
