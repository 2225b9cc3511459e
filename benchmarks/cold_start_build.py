"""Section 4's artifacts: the layer and the functions built by their own Makefiles (as `sam build` runs them), with
and without Python 3.13 bytecode, for this tree and for an earlier commit; and Lambda's runtime packages."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.cold_start_template import LOGICAL_IDS, Shipped, shipped
from benchmarks.harness import FUNCTIONS, ROOT

LAMBDA_PYTHON_VERSION = "3.13"


@dataclass(frozen=True)
class Build:
    """One version of the code built one way: what Lambda would load from /var/task and /opt/python."""

    version: str  # "after" (this tree) or "before" (an earlier commit)
    bytecode: bool  # built with LAMBDA_PYTHON set (Python 3.13 bytecode), or as on a machine without it
    shipped: Shipped | None = None  # the template's functions and layers (None: the template was unreadable)
    layers: dict[str, Path] = field(default_factory=dict)  # layer logical ID -> its built python/ folder
    functions: dict[str, Path] = field(default_factory=dict)  # function -> its artifact folder (app.py)
    error: str = ""  # why it could not be built ("" when it was)

    def sys_path(self, function: str) -> list[Path]:
        """The function's folder, then its layers in the template's order (Lambda: /var/task, /opt/python)."""
        layers = self.shipped.layers[function] if self.shipped else []
        return [self.functions[function], *(self.layers[logical_id] for logical_id in layers)]


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


def host_arch() -> str:
    return "arm64" if platform.machine() in ("aarch64", "arm64") else "x86_64"


def _run(command: list[str], *, cwd: Path | None = None) -> str:
    """Run a build step; "" when it worked, else the last line of what it said."""
    result = subprocess.run(  # noqa: S603 - our own tools and Makefiles
        command, cwd=cwd, capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode == 0:
        return ""
    said = (result.stderr.strip() or result.stdout.strip() or f"exit status {result.returncode}").splitlines()
    return said[-1][:300]


def _make(directory: Path, target: str, variables: dict[str, str]) -> str:
    make = shutil.which("make")
    if make is None:
        return "make not found"
    return _run(
        [make, "--no-print-directory", "-C", str(directory), target, *(f"{k}={v}" for k, v in variables.items())]
    )


def build(version: str, source: Path, artifacts: Path, *, lambda_python: str | None) -> Build:
    """The functions of `source` and the layers its template gives them, built into `artifacts` by their
    Makefiles. `lambda_python` None passes `LAMBDA_PYTHON=` (empty): exactly a build machine without Python
    3.13, whatever is on PATH."""
    bytecode = lambda_python is not None
    try:
        functions_as_shipped = shipped(source)
    except Exception as unreadable:  # noqa: BLE001 - reported in the section
        return Build(version, bytecode, error=f"template.yaml: {type(unreadable).__name__}: {unreadable}")
    python = {"LAMBDA_PYTHON": lambda_python or ""}
    layers: dict[str, Path] = {}
    for logical_id, layer in functions_as_shipped.sources.items():
        layers[logical_id] = artifacts / logical_id / "python"
        variables = {
            "ARTIFACTS_DIR": str(artifacts / logical_id),
            # Ignored by a pure-Python layer's Makefile; an earlier one picks its compiled wheels by it.
            "LAYER_ARCHITECTURE": host_arch(),
            "LAYER_PYTHON": sys.executable,
            **python,
        }
        error = _make(layer.content, f"build-{logical_id}", variables)
        if error:
            return Build(version, bytecode, functions_as_shipped, error=f"{logical_id}: {error}")
    functions: dict[str, Path] = {}
    for function in FUNCTIONS:
        functions[function] = artifacts / function
        variables = {"ARTIFACTS_DIR": str(functions[function]), **python}
        error = _make(source / "functions" / function, f"build-{LOGICAL_IDS[function]}", variables)
        if error:
            return Build(version, bytecode, functions_as_shipped, error=f"{function}: {error}")
    return Build(version, bytecode, functions_as_shipped, layers, functions)


def extract(ref: str, into: Path) -> str:
    """The layer, the functions and the template as they were at `ref`; "" when done, else why not."""
    git = shutil.which("git")
    if git is None:
        return "git not found"
    if _run([git, "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"]) or not (
        (ROOT / ".git").exists()
    ):
        return f"{ref} is not a commit of this repository"
    archive = into.parent / f"{into.name}.tar"
    error = _run(
        [
            git,
            "-C",
            str(ROOT),
            "archive",
            "--format=tar",
            "-o",
            str(archive),
            ref,
            "layers",
            "functions",
            "template.yaml",
        ]
    )
    if error:
        return error
    into.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return ""


def pinned(name: str) -> str:
    """`name==version` as requirements-dev.txt pins it (the venv's boto3 is the one the layer is tested with)."""
    for line in (ROOT / "requirements-dev.txt").read_text().splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.split("#")[0].strip()
    return name


def install_runtime(python: str, target: Path) -> str:
    """boto3 and botocore with their dependencies, compiled by `python`: the packages Lambda's Python runtime
    provides (with bytecode) after /opt/python on sys.path."""
    return _run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
            str(target),
            pinned("boto3"),
            pinned("botocore"),
        ]
    )


@dataclass(frozen=True)
class TreeSize:
    unzipped: int
    zipped: int
    files: int
    bytecode_files: int


def tree_size(root: Path, archive: Path) -> TreeSize:
    """A layer folder's size unzipped and zipped with deflate (as SAM uploads it), and its file counts."""
    files = sorted(path for path in root.rglob("*") if path.is_file())
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for path in files:
            zipped.write(path, path.relative_to(root.parent))
    size = archive.stat().st_size
    archive.unlink()
    return TreeSize(
        sum(path.stat().st_size for path in files), size, len(files), sum(path.suffix == ".pyc" for path in files)
    )
