"""The handlers import from what `sam build` made, as Lambda's Python 3.13 runtime would import them.

`make build-all` builds both architectures into .aws-sam/build-all/<arch>. For every function of each build's
template, a fresh Python 3.13 (found as the Makefile's LAMBDA_PYTHON is) imports the handler module with:

* the function's build folder first and the layer's `python` folder next (Lambda's /var/task, /opt/python);
* then a folder holding only boto3, botocore and their dependencies, taken from .venv: the Lambda runtime
  brings its own boto3, so the layer does not ship it (layers/usage_engine/requirements.txt);
* isolated mode without site (-I -S): no PYTHONPATH, no site-packages of that interpreter, no repository
  sources (the working directory is a temporary folder), and -B so nothing is written into the artifacts.

Without .aws-sam/build-all the tests skip, unless REQUIRE_BUILD_ARTIFACTS=1 (as `make pytest` sets it; `make
test` runs build-all before pytest), which turns the skip into a failure. Without Python 3.13 on the machine
the current interpreter imports the handlers instead, with a warning saying so.

The last tests break a copy of a built layer (a usage_engine module removed, a dependency removed) and check
that the same import check fails, so a passing check means the artifacts are complete.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_ALL = REPO_ROOT / ".aws-sam" / "build-all"
ARCHITECTURES = ("arm64", "x86_64")
REQUIRED = os.environ.get("REQUIRE_BUILD_ARTIFACTS") == "1"
LAMBDA_VERSION = (3, 13)
# What the Lambda Python runtime provides next to the function and its layers (boto3 and its dependencies).
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3")

# Runs in the fresh interpreter: argv = function dir, layer dirs (os.pathsep-separated), runtime dir, handler.
IMPORT_CHECK = r"""
import importlib, json, os, sys, sysconfig
function_dir, layer_dirs, runtime_dir, handler = sys.argv[1:5]
sys.path[:0] = [function_dir, *layer_dirs.split(os.pathsep)]
sys.path.append(runtime_dir)
module_name, _, attribute = handler.rpartition(".")
module = importlib.import_module(module_name)
assert callable(getattr(module, attribute)), f"{handler} is not callable"
print(json.dumps({
    "version": list(sys.version_info[:2]),
    "handler_file": module.__file__,
    "stdlib": [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]],
    "modules": {name: m.__file__ for name, m in sorted(sys.modules.items()) if getattr(m, "__file__", None)},
}))
"""


@dataclass(frozen=True)
class Function:
    """One function of one architecture's build: its folder, its layers' `python` folders and its handler."""

    arch: str
    function_id: str
    function_dir: Path
    layer_dirs: tuple[Path, ...]
    handler: str
    # Layers a template condition adds (`!If [Condition, !Ref Layer, !Ref AWS::NoValue]`): the X-Ray SDK layer.
    conditional_layer_dirs: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Missing:
    """No build to check: why (a skip, or with REQUIRE_BUILD_ARTIFACTS=1 a failure)."""

    reason: str


def _missing(reason: str) -> Missing:
    return Missing(f"{reason} (run `make build-all`; `make test` does)")


def _functions(arch: str) -> list[Function | Missing]:
    build_dir = BUILD_ALL / arch
    template_path = build_dir / "template.yaml"
    if not template_path.is_file():
        return [_missing(f"{template_path.relative_to(REPO_ROOT)} not found")]
    # sam build writes its template in long form (no short-form tags), so plain YAML reads it.
    template = yaml.safe_load(template_path.read_text())
    defaults = (template.get("Globals") or {}).get("Function") or {}
    resources = template["Resources"]
    found: list[Function | Missing] = []
    for function_id, resource in resources.items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        properties = {**defaults, **resource["Properties"]}

        def layer_dir(reference: dict[str, str]) -> Path:
            return build_dir / resources[reference["Ref"]]["Properties"]["ContentUri"] / "python"

        layers = properties["Layers"]
        plain = tuple(layer_dir(layer) for layer in layers if "Ref" in layer)
        conditional = tuple(layer_dir(layer["Fn::If"][1]) for layer in layers if "Fn::If" in layer)
        found.append(
            Function(arch, function_id, build_dir / properties["CodeUri"], plain, properties["Handler"], conditional)
        )
    return found or [_missing(f"no functions in {template_path.relative_to(REPO_ROOT)}")]


def _cases() -> list[Any]:
    if not BUILD_ALL.is_dir():
        return [pytest.param(_missing(f"{BUILD_ALL.relative_to(REPO_ROOT)} not found"), id="no-build")]
    return [
        pytest.param(case, id=f"{arch}-{case.function_id}" if isinstance(case, Function) else f"{arch}-no-build")
        for arch in ARCHITECTURES
        for case in _functions(arch)
    ]


CASES = _cases()


def _require(case: Function | Missing) -> Function:
    if isinstance(case, Missing):
        if REQUIRED:
            pytest.fail(f"REQUIRE_BUILD_ARTIFACTS=1: {case.reason}", pytrace=False)
        pytest.skip(case.reason)
    return case


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        result = subprocess.run(  # noqa: S603 (a python interpreter we looked up, fixed arguments)
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    major, minor = result.stdout.split()
    return int(major), int(minor)


@pytest.fixture(scope="session")
def lambda_python() -> str:
    """Lambda's Python (3.13), looked up as the Makefile's LAMBDA_PYTHON is; else this interpreter, with a note."""
    candidates = [
        os.environ.get("LAMBDA_PYTHON", "").strip(),
        shutil.which("python3.13") or "",
        *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13*/bin/python3.13"))),
    ]
    for candidate in filter(None, candidates):
        if _version_of(candidate) == LAMBDA_VERSION:
            return candidate
    note = (
        f"python3.13 (Lambda's runtime) not found: the built handlers are imported with {sys.executable} "
        f"(Python {sys.version_info[0]}.{sys.version_info[1]}) instead; set LAMBDA_PYTHON to check with 3.13"
    )
    print(f"NOTE: {note}")
    warnings.warn(note, stacklevel=1)
    return sys.executable


@pytest.fixture(scope="session")
def runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with only what the Lambda runtime adds to the path: boto3 and its dependencies (from .venv)."""
    folder = tmp_path_factory.mktemp("lambda-runtime")
    for name in RUNTIME_PACKAGES:
        spec = importlib.util.find_spec(name)
        assert spec is not None, f"{name} is not installed in {sys.prefix}"
        if spec.submodule_search_locations:
            source = Path(next(iter(spec.submodule_search_locations)))
            (folder / name).symlink_to(source, target_is_directory=True)
        else:
            assert spec.origin is not None
            (folder / f"{name}.py").symlink_to(spec.origin)
    return folder


def import_handler(
    python: str,
    function: Function,
    layer_dirs: tuple[Path, ...],
    runtime: Path,
    cwd: Path,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Import the function's handler in a fresh, isolated interpreter (see the module docstring)."""
    env = {
        "PATH": os.defpath,
        "HOME": str(cwd),
        "LANG": "C.UTF-8",
        # What Lambda sets for every function; no test reaches a real AWS endpoint.
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_LAMBDA_FUNCTION_NAME": function.function_id,
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
        "LAMBDA_TASK_ROOT": str(function.function_dir),
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        **(extra_env or {}),
    }
    arguments = [str(function.function_dir), os.pathsep.join(map(str, layer_dirs)), str(runtime), function.handler]
    return subprocess.run(  # noqa: S603 (a python interpreter we looked up, fixed arguments)
        [python, "-I", "-S", "-B", "-c", IMPORT_CHECK, *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
        check=False,
    )


def _within(path: str, folders: list[Path]) -> bool:
    return any(Path(path).is_relative_to(folder) for folder in folders)


@pytest.mark.parametrize("case", CASES)
def test_handler_imports_from_the_build(
    case: Function | Missing, lambda_python: str, runtime_dir: Path, tmp_path: Path
) -> None:
    function = _require(case)
    assert function.function_dir.is_dir(), f"{function.function_dir} not found"
    for layer_dir in function.layer_dirs:
        assert layer_dir.is_dir(), f"{layer_dir} not found"
    result = import_handler(lambda_python, function, function.layer_dirs, runtime_dir, tmp_path)
    assert result.returncode == 0, f"{function.arch} {function.function_id}: import failed:\n{result.stderr}"
    report = json.loads(result.stdout.splitlines()[-1])
    if lambda_python != sys.executable:
        assert tuple(report["version"]) == LAMBDA_VERSION
    assert Path(report["handler_file"]).parent == function.function_dir
    # Every module came from the artifacts, the runtime's boto3 or the standard library, never from the
    # repository's sources or any site-packages.
    allowed = [function.function_dir, *function.layer_dirs, runtime_dir, *map(Path, report["stdlib"])]
    strays = {name: path for name, path in report["modules"].items() if not _within(path, allowed)}
    assert not strays, f"modules from outside the artifacts: {strays}"
    layer_modules = {name for name, path in report["modules"].items() if _within(path, list(function.layer_dirs))}
    assert "usage_engine" in layer_modules


def _first_build() -> Function | Missing:
    cases: list[Function | Missing] = [case.values[0] for case in CASES]
    return next((case for case in cases if isinstance(case, Function)), cases[0])


def _layer_without(layer_dir: Path, removed: str, into: Path) -> Path:
    """A copy of a built layer's `python` folder without `removed` (a top-level entry, or a file path inside
    usage_engine/ with its bytecode): every other entry is a symlink to the build, usage_engine is copied."""
    into.mkdir()
    for entry in layer_dir.iterdir():
        if entry.name == "usage_engine":
            shutil.copytree(entry, into / entry.name)
        elif entry.name != removed:
            (into / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    if "/" in removed:
        module = into / removed
        module.unlink()
        for bytecode in (module.parent / "__pycache__").glob(f"{module.stem}.*.pyc"):
            bytecode.unlink()
    return into


@pytest.mark.parametrize("kind", ["usage_engine module", "dependency"])
def test_the_check_fails_when_the_layer_misses_a_module(
    kind: str, lambda_python: str, runtime_dir: Path, tmp_path: Path
) -> None:
    function = _require(_first_build())
    (layer_dir,) = function.layer_dirs
    complete = import_handler(lambda_python, function, function.layer_dirs, runtime_dir, tmp_path)
    assert complete.returncode == 0, complete.stderr
    loaded = json.loads(complete.stdout.splitlines()[-1])["modules"]
    from_layer = {name: Path(path) for name, path in loaded.items() if Path(path).is_relative_to(layer_dir)}
    if kind == "usage_engine module":
        # A submodule the handler's import loads (not the package's __init__).
        name = sorted(n for n in from_layer if n.startswith("usage_engine."))[0]
        removed = from_layer[name].relative_to(layer_dir).as_posix()
        missing = name
    else:
        # A third-party package of the layer that the import loads (not provided by the runtime).
        tops = {n.split(".")[0] for n in from_layer} - {"usage_engine", *RUNTIME_PACKAGES}
        missing = removed = sorted(tops)[0]
    broken = _layer_without(layer_dir, removed, tmp_path / "layer")
    assert (layer_dir / removed).exists(), "the build itself must stay untouched"
    result = import_handler(lambda_python, function, (broken,), runtime_dir, tmp_path)
    assert result.returncode != 0, f"import still succeeded without {removed}"
    assert f"ModuleNotFoundError: No module named {missing!r}" in result.stderr, result.stderr


@pytest.mark.parametrize("case", CASES)
def test_handler_imports_with_the_opt_in_xray_sdk_layer(
    case: Function | Missing, lambda_python: str, runtime_dir: Path, tmp_path: Path
) -> None:
    # XRaySdkTracing=Enabled: the template adds the X-Ray SDK layer and turns the handlers' switch on.
    function = _require(case)
    assert len(function.conditional_layer_dirs) == 1, "the X-Ray SDK layer is the one conditional layer"
    layers = (*function.layer_dirs, *function.conditional_layer_dirs)
    result = import_handler(
        lambda_python, function, layers, runtime_dir, tmp_path, extra_env={"USAGE_ENGINE_XRAY_SDK": "true"}
    )
    assert result.returncode == 0, f"{function.arch} {function.function_id}: import failed:\n{result.stderr}"
    modules = json.loads(result.stdout.splitlines()[-1])["modules"]
    assert _within(modules["aws_xray_sdk"], list(function.conditional_layer_dirs))
    # Without the switch the same handler never loads the SDK, even with its layer present.
    plain = import_handler(lambda_python, function, layers, runtime_dir, tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "aws_xray_sdk" not in json.loads(plain.stdout.splitlines()[-1])["modules"]
