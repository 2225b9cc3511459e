"""Section 4: handler import time in a fresh process (the cold start's share the code controls), and the built
layer's size per architecture."""

from __future__ import annotations

import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from benchmarks.harness import FUNCTIONS, LAYER_DIR, ROOT
from benchmarks.report import Section, Target, table

IMPORT_SCRIPT = """
import importlib.util, sys, time
target, paths = sys.argv[1], [p for p in sys.argv[2:] if p]
sys.path[:0] = paths  # the layer first, as /opt/python comes before the runtime's packages in Lambda
started = time.perf_counter()
if target == "boto3":
    import boto3
else:
    spec = importlib.util.spec_from_file_location("app", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
print(time.perf_counter() - started)
"""

LAMBDA_ENV = {
    # What the Lambda runtime sets (Powertools' Tracer patches X-Ray only inside Lambda); Tracing: Active.
    "LAMBDA_TASK_ROOT": "/var/task",
    "AWS_LAMBDA_FUNCTION_NAME": "bench",
    "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
    "AWS_REGION": "eu-west-1",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "POWERTOOLS_METRICS_NAMESPACE": "UsageEngine",
    "POWERTOOLS_LOGGER_LOG_EVENT": "false",
    "LOG_LEVEL": "INFO",
    # Lambda cannot write bytecode next to /opt/python (read-only), so nothing is cached between cold starts.
    "PYTHONDONTWRITEBYTECODE": "1",
}
LAMBDA_PYTHON_VERSION = "3.13"


def lambda_python() -> str | None:
    """An interpreter of the Lambda runtime's Python version: $LAMBDA_PYTHON, python3.13 on PATH, or pyenv's."""
    candidates = [os.environ.get("LAMBDA_PYTHON", ""), shutil.which(f"python{LAMBDA_PYTHON_VERSION}") or ""]
    candidates += sorted(str(p) for p in Path.home().glob(f".pyenv/versions/{LAMBDA_PYTHON_VERSION}*/bin/python3"))
    wanted = tuple(int(part) for part in LAMBDA_PYTHON_VERSION.split("."))
    for candidate in candidates:
        if not candidate or not Path(candidate).exists():
            continue
        # A pyenv shim exists on PATH even when it cannot run that version.
        probe = subprocess.run(  # noqa: S603
            [candidate, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if probe.returncode == 0 and tuple(int(x) for x in probe.stdout.split()) == wanted:
            return candidate
    return None


def import_seconds(python: str, target: str, paths: list[Path], runs: int) -> float:
    env = {"PATH": os.environ.get("PATH", ""), **LAMBDA_ENV}
    times = []
    for _ in range(runs):
        out = subprocess.run(  # noqa: S603 - our own interpreter and script
            [python, "-c", IMPORT_SCRIPT, target, *(str(p) for p in paths)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def without_tracer(source: str) -> str:
    """The handler minus Powertools' Tracer (import, instance, decorator): what the X-Ray SDK costs."""
    source = re.sub(r"(from aws_lambda_powertools import [^\n]*), Tracer\b", r"\1", source)
    return "\n".join(line for line in source.splitlines() if not line.startswith(("tracer = ", "@tracer.")))


def pip_target(python: str, target: Path, requirements: list[str], *, bytecode: bool) -> None:
    subprocess.run(  # noqa: S603
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *([] if bytecode else ["--no-compile"]),
            "--target",
            str(target),
            *requirements,
        ],
        check=True,
        timeout=600,
    )


def compile_tree(python: str, tree: Path) -> None:
    """Bytecode for `python`, valid whatever the files' timestamps become (zip, layer extraction)."""
    subprocess.run(  # noqa: S603
        [python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash", str(tree)],
        check=True,
        timeout=600,
    )


def pinned(name: str) -> str:
    for line in (ROOT / "requirements-dev.txt").read_text().splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.split("#")[0].strip()
    return name


def host_arch() -> str:
    return "arm64" if platform.machine() in ("aarch64", "arm64") else "x86_64"


def build_layer(arch: str, artifacts: Path) -> bool:
    """The layer's own Makefile, run as `sam build` runs it (ARTIFACTS_DIR, LAYER_ARCHITECTURE)."""
    make = shutil.which("make")
    if make is None:
        return False
    result = subprocess.run(  # noqa: S603
        [
            make,
            "--no-print-directory",
            "-C",
            str(LAYER_DIR),
            "build-UsageEngineLayer",
            f"ARTIFACTS_DIR={artifacts}",
            f"LAYER_ARCHITECTURE={arch}",
            f"LAYER_PYTHON={sys.executable}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return result.returncode == 0


def tree_size(root: Path, work: Path) -> tuple[int, int, int]:
    """(unzipped bytes, zipped bytes, files) of a layer folder, zipped with deflate as SAM uploads it."""
    files = [path for path in root.rglob("*") if path.is_file()]
    archive = work / f"{root.parent.name}.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for path in files:
            zipped.write(path, path.relative_to(root.parent))
    return sum(path.stat().st_size for path in files), archive.stat().st_size, len(files)


def bench_cold(quick: bool) -> Section:
    section = Section("4. Cold start: handler import time and layer size")
    runs = 3 if quick else 7
    python = lambda_python()
    with tempfile.TemporaryDirectory(prefix="bench-layer-") as scratch:
        work = Path(scratch)
        built = {arch: build_layer(arch, work / f"layer-{arch}") for arch in ("arm64", "x86_64")}
        if python and built[host_arch()]:
            # The layer exactly as built for this machine's architecture (CPython 3.13 wheels), and
            # boto3 installed with bytecode beside it, as the Lambda runtime provides it.
            where = f"Python {LAMBDA_PYTHON_VERSION} (Lambda's version, `{python}`)"
            plain = work / f"layer-{host_arch()}" / "python"
            boto3_dir = work / "runtime"
            pip_target(python, boto3_dir, [pinned("boto3"), pinned("botocore")], bytecode=True)
            runtime: Path | None = boto3_dir
        else:
            # No Python 3.13 here: the layer's pins for this Python instead; boto3 from the venv (with bytecode).
            python, runtime = sys.executable, None
            where = f"Python {platform.python_version()} (no Python {LAMBDA_PYTHON_VERSION} found; Lambda runs it)"
            plain = work / "plain" / "python"
            pip_target(python, plain, ["--no-deps", "-r", str(LAYER_DIR / "requirements.txt")], bytecode=False)
            shutil.copytree(
                LAYER_DIR / "usage_engine", plain / "usage_engine", ignore=shutil.ignore_patterns("__pycache__")
            )
        # `plain` is what the layer Makefile built: with Python 3.13 bytecode when it found that Python
        # (LAMBDA_PYTHON), sources only otherwise. Both variants are measured, whichever was shipped.
        shipped_bytecode = any(plain.rglob("*.pyc"))
        sources = work / "sources" / "python"
        shutil.copytree(plain, sources, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        compiled = work / "compiled" / "python"
        shutil.copytree(sources, compiled)
        compile_tree(python, compiled)
        stripped = work / "functions"
        for function in FUNCTIONS:
            (stripped / function).mkdir(parents=True)
            source = (ROOT / "functions" / function / "app.py").read_text()
            (stripped / function / "app.py").write_text(without_tracer(source))

        def paths(layer: Path) -> list[Path]:
            return [layer] if runtime is None else [layer, runtime]

        baseline = import_seconds(python, "boto3", paths(plain), runs)
        rows = [["`import boto3` alone (baseline)", f"{baseline * 1000:.0f} ms", "1.00", "", "", ""]]
        ratios = []
        for function in FUNCTIONS:
            app = str(ROOT / "functions" / function / "app.py")
            shipped = import_seconds(python, app, paths(plain), runs)
            source_only = import_seconds(python, app, paths(sources), runs)
            with_pyc = import_seconds(python, app, paths(compiled), runs)
            no_tracer = import_seconds(python, str(stripped / function / "app.py"), paths(plain), runs)
            ratios.append(shipped / baseline)
            rows.append(
                [
                    f"`functions/{function}/app.py`",
                    f"{shipped * 1000:.0f} ms",
                    f"{shipped / baseline:.2f}",
                    f"{source_only * 1000:.0f} ms ({source_only / baseline:.2f})",
                    f"{with_pyc * 1000:.0f} ms ({with_pyc / baseline:.2f})",
                    f"{no_tracer * 1000:.0f} ms ({no_tracer / baseline:.2f})",
                ]
            )
        section.add(
            f"Median of {runs} fresh processes each, on {where}, with the Lambda environment variables (so "
            "Powertools' Tracer loads and patches the X-Ray SDK, as with `Tracing: Active`) and "
            "`PYTHONDONTWRITEBYTECODE=1`. *As shipped*: the layer as the layer Makefile built it here ("
            + (
                "with Python 3.13 bytecode, compiled at build time because it found that Python"
                if shipped_bytecode
                else "sources only: it found no Python 3.13 to compile bytecode with"
            )
            + "). Lambda cannot write `__pycache__` under the read-only `/opt`, so a layer without bytecode is "
            "compiled at every cold start. boto3 has bytecode, as the Lambda runtime's does. *Sources only* and "
            "*with bytecode*: the same layer without any `.pyc`, and compiled by that Python "
            "(`compileall --invalidation-mode unchecked-hash`).",
            "",
            *table(
                [
                    "import",
                    "as shipped",
                    "x boto3",
                    "sources only (x boto3)",
                    "with bytecode (x boto3)",
                    "as shipped, no Tracer (x boto3)",
                ],
                rows,
            ),
        )
        size_rows: list[list[str | int]] = []
        for arch in ("arm64", "x86_64"):
            if not built[arch]:
                size_rows.append([arch, "build failed (PyPI unreachable?)", "", ""])
                continue
            unzipped, zipped, files = tree_size(work / f"layer-{arch}" / "python", work)
            size_rows.append([arch, f"{unzipped / 1e6:.1f} MB", f"{zipped / 1e6:.1f} MB", files])
        if built[host_arch()] and python != sys.executable:
            unzipped, zipped, files = tree_size(compiled, work)
            size_rows.append(
                [f"{host_arch()} with bytecode", f"{unzipped / 1e6:.1f} MB", f"{zipped / 1e6:.1f} MB", files]
            )
        section.add(
            "Built layer (`make -C layers/usage_engine build-UsageEngineLayer` with `ARTIFACTS_DIR` and "
            "`LAYER_ARCHITECTURE`, as `sam build` runs it; zipped with deflate as SAM uploads it):",
            "",
            *table(["layer", "unzipped", "zipped", "files"], size_rows),
        )
    worst = max(ratios)
    section.targets.append(
        Target(
            "importing any handler as shipped adds ≤ 50% over `import boto3`",
            f"worst {worst:.2f}x ({', '.join(f'{r:.2f}' for r in ratios)})",
            worst <= 1.5,
            (
                "the layer was built with Python 3.13 bytecode"
                if shipped_bytecode
                else "built without Python 3.13 the layer ships no bytecode: set LAMBDA_PYTHON (section 4)"
            ),
        )
    )
    return section
