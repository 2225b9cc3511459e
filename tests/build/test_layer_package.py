"""The layer as a pip-installable package (layers/usage_engine/pyproject.toml), as a consumer project installs it.

A wheel is built from a copy of layers/usage_engine (so no build/ or *.egg-info lands in the repository) with
.venv's setuptools, offline (`pip wheel --no-deps --no-build-isolation --no-index`), then installed with
--no-deps into an empty folder. A fresh interpreter in isolated mode without site, with only that folder and
.venv's site-packages (for the dependencies) on its path and a temporary working directory, imports every
module of the installed package and reads its version both ways.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parents[2]
LAYER_DIR = REPO_ROOT / "layers" / "usage_engine"
PACKAGE_DIR = LAYER_DIR / "usage_engine"
DISTRIBUTION = "usage-engine-lambda"
# What the Lambda runtime provides: the package must not require it (only its `local` extra may).
RUNTIME_PROVIDED = {"boto3", "botocore"}

# Runs in the fresh interpreter: argv = the install folder, the folder with the dependencies, the distribution.
IMPORT_CHECK = r"""
import importlib, importlib.metadata, json, pkgutil, sys
target, dependencies, distribution = sys.argv[1:4]
sys.path[:0] = [target]
sys.path.append(dependencies)
import usage_engine
import usage_engine.version
modules = {}
for info in pkgutil.walk_packages(usage_engine.__path__, "usage_engine."):
    modules[info.name] = importlib.import_module(info.name).__file__
modules["usage_engine"] = usage_engine.__file__
print(json.dumps({
    "module_version": usage_engine.version.__version__,
    "metadata_version": importlib.metadata.version(distribution),
    "modules": modules,
}))
"""


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300, check=False
    )
    assert result.returncode == 0, f"{args[:3]} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("setuptools.command.bdist_wheel") is None:
        pytest.fail(
            "building the layer's wheel offline needs setuptools >= 70.1 in .venv (bdist_wheel built in): "
            "pin it in requirements-dev.txt"
        )
    work = tmp_path_factory.mktemp("layer_package")
    source = work / "source"
    shutil.copytree(
        LAYER_DIR, source, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "*.py[co]")
    )
    dist = work / "dist"
    run(
        "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps", "--no-build-isolation", "--no-index",
        "--wheel-dir", dist, source, cwd=work,
    )  # fmt: skip
    [built] = dist.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        [name] = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        return Parser().parsestr(archive.read(name).decode("utf-8"))


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    work = tmp_path_factory.mktemp("layer_install")
    target = work / "target"
    run(
        "-m", "pip", "install", "--disable-pip-version-check", "--no-deps", "--no-index", "--no-compile",
        "--target", target, wheel, cwd=work,
    )  # fmt: skip
    dependencies = sysconfig.get_paths()["purelib"]
    result = run("-I", "-S", "-B", "-c", IMPORT_CHECK, target, dependencies, DISTRIBUTION, cwd=work)
    report: dict[str, object] = json.loads(result.stdout)
    report["target"] = str(target)
    return report


def source_version() -> str:
    """version.py's literal, read without importing the package."""
    tree = ast.parse((PACKAGE_DIR / "version.py").read_text(encoding="utf-8"))
    [value] = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["__version__"]
        and isinstance(node.value, ast.Constant)
    ]
    assert isinstance(value, str)
    return value


def source_modules() -> set[str]:
    return {f"usage_engine/{path.relative_to(PACKAGE_DIR).as_posix()}" for path in PACKAGE_DIR.rglob("*.py")}


def test_the_wheel_holds_the_package_its_type_marker_and_nothing_else(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    package = {name for name in names if name.startswith("usage_engine/")}
    dist_info = {name for name in names if name.split("/")[0].endswith(".dist-info")}
    assert names == package | dist_info
    assert package == source_modules() | {"usage_engine/py.typed"}
    assert not [name for name in names if "test" in name.rsplit("/", 1)[-1] or name.endswith((".pyc", ".pyo"))]


def test_the_wheels_version_is_version_py_and_boto3_is_only_an_extra(wheel: Path, metadata: Message) -> None:
    assert metadata["Name"] == DISTRIBUTION
    assert metadata["Version"] == source_version()
    assert wheel.name.startswith(f"{DISTRIBUTION.replace('-', '_')}-{source_version()}-py3-none-any")
    assert metadata["Requires-Python"] == ">=3.11"
    requirements = [Requirement(line) for line in metadata.get_all("Requires-Dist", [])]
    required = {r.name.lower() for r in requirements if r.marker is None}
    assert required, "no dependencies declared"
    assert not required & RUNTIME_PROVIDED
    local = {r.name.lower() for r in requirements if r.marker is not None and r.marker.evaluate({"extra": "local"})}
    assert "boto3" in local


def test_the_layers_pins_satisfy_the_packages_ranges(metadata: Message) -> None:
    # The layer (requirements.txt) and the package must not drift apart: each dependency the package declares
    # is pinned for the layer, at a version inside the declared range. urllib3 is the Lambda runtime's.
    pins: dict[str, str] = {}
    for line in (LAYER_DIR / "requirements.txt").read_text(encoding="utf-8").splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            name, _, version = requirement.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    for requirement in (Requirement(line) for line in metadata.get_all("Requires-Dist", [])):
        name = requirement.name.lower().replace("_", "-")
        if requirement.marker is not None or name == "urllib3":
            continue
        assert name in pins, f"{name} is a dependency of the package but not pinned for the layer"
        assert requirement.specifier.contains(pins[name]), f"the layer pins {name}=={pins[name]}: {requirement}"


def test_the_installed_package_imports_from_its_install_folder_with_its_version(installed: dict[str, object]) -> None:
    assert installed["module_version"] == installed["metadata_version"] == source_version()
    modules = installed["modules"]
    assert isinstance(modules, dict)
    target = Path(str(installed["target"]))
    # From the install folder, not the repository's sources.
    assert all(Path(file).is_relative_to(target) for file in modules.values()), modules
    imported = {
        f"usage_engine/{Path(file).relative_to(target / 'usage_engine').as_posix()}" for file in modules.values()
    }
    assert imported == source_modules()
    assert (target / "usage_engine" / "py.typed").is_file()
