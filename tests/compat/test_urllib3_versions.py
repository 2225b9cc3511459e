"""The layer's HTTP retries under both urllib3 lines the Lambda runtime may provide.

The layer ships no urllib3: it uses the runtime's (botocore's), which is 1.26 or 2.x depending on the runtime
and its botocore. The normal suite runs on .venv's urllib3 (2.x). Here the unit tests that drive retrying_http
and api_client through urllib3's own Retry, Timeout and connection pools (no moto) run again in a child
interpreter with urllib3 1.26 first on its path: pip-installed once, with --target, into a cache folder in
the venv (.venv/compat/urllib3-<version>), reused by later runs. The child checks in-process that it really
imported that urllib3 before it runs them.

Needs the package registry once per venv; the install skips, saying why, only when the registry cannot be
reached (a missing version or a failing pip fails).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LAYER_DIR = REPO_ROOT / "layers" / "usage_engine"
# The newest 1.26 release (the line ended there).
URLLIB3_1_26 = "1.26.20"
CACHE_DIR = Path(sys.prefix) / "compat" / f"urllib3-{URLLIB3_1_26}"

# What exercises urllib3 for real: the Retry subclass and its backoff, the deadline-bounded timeouts and
# retries, and the API client's session against the Usage Engine emulator on loopback.
HTTP_TESTS = (
    "tests/unit/test_retrying_http.py",
    "tests/unit/test_capped_retry_backoff.py",
    "tests/unit/test_deadline.py",
    "tests/unit/test_api_client.py",
)

# Each of the child's commands starts with this: the urllib3 it imported, and every layer module imported
# with it (a name urllib3 1.26 lacks fails here, not only where a test happens to reach it).
VERSION_CHECK = r"""
import importlib, pkgutil, sys, urllib3
expected = sys.argv[1]
if urllib3.__version__ != expected:
    sys.exit(f"urllib3 {urllib3.__version__} from {urllib3.__file__}, expected {expected}")
import usage_engine
for info in pkgutil.walk_packages(usage_engine.__path__, "usage_engine."):
    importlib.import_module(info.name)
print(urllib3.__version__, urllib3.__file__)
"""

RUN_TESTS = VERSION_CHECK + "import pytest\nsys.exit(pytest.main(sys.argv[2:]))\n"

NETWORK_TROUBLE = re.compile(
    r"NewConnectionError|ConnectTimeout|ReadTimeout|NameResolutionError|Max retries exceeded|"
    r"Temporary failure in name resolution|Name or service not known|Network is unreachable|"
    r"Connection refused|SSLError|ProxyError",
)


def child_env(extra_path: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    # The parent's run settings are not the child's: its selection has no build tier, and options meant for
    # the parent (coverage, -x, ...) would apply to it twice.
    for name in ("REQUIRE_BUILD_ARTIFACTS", "PYTEST_ADDOPTS"):
        env.pop(name, None)
    # PYTHONPATH comes before site-packages: this urllib3 shadows .venv's. The layer as in Lambda (/opt/python).
    path = [str(p) for p in (extra_path, LAYER_DIR) if p is not None]
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(path)
    return env


def run_child(code: str, *args: str, extra_path: Path | None, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - this interpreter, our own code, fixed arguments
        [sys.executable, "-c", code, *args],
        cwd=REPO_ROOT,
        env=child_env(extra_path),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def install_urllib3(version: str, target: Path) -> None:
    """pip-install urllib3==version alone into `target`, atomically: a run that dies halfway leaves no cache
    that looks complete, and two runs at once both end with a whole one."""
    if (target / f"urllib3-{version}.dist-info").is_dir():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would be the cache's
    try:
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        command += ["--no-deps", "--no-compile", "--timeout", "20", "--retries", "1", "--target", str(staging)]
        try:
            result = subprocess.run(  # noqa: S603 - this interpreter's pip, fixed arguments
                [*command, f"urllib3=={version}"], capture_output=True, text=True, timeout=180, check=False
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"package registry unreachable: pip install urllib3=={version} timed out")
        if result.returncode != 0:
            output = result.stdout + result.stderr
            trouble = NETWORK_TROUBLE.search(output)
            if trouble:
                pytest.skip(f"package registry unreachable: pip install urllib3=={version}: {trouble.group(0)}")
            pytest.fail(f"pip install urllib3=={version} failed:\n{output[-3000:]}")
        try:
            staging.rename(target)
        except OSError:
            if not (target / f"urllib3-{version}.dist-info").is_dir():
                raise
            # Another run put a whole copy in place first.
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@pytest.fixture(scope="session")
def urllib3_1_26() -> Path:
    install_urllib3(URLLIB3_1_26, CACHE_DIR)
    return CACHE_DIR


def test_the_child_imports_urllib3_1_26_and_every_layer_module_with_it(urllib3_1_26: Path) -> None:
    result = run_child(VERSION_CHECK, URLLIB3_1_26, extra_path=urllib3_1_26, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    version, location = result.stdout.strip().split(" ", 1)
    assert version.startswith("1.26.")
    assert Path(location).is_relative_to(urllib3_1_26)


def test_the_http_retry_tests_pass_with_urllib3_1_26(urllib3_1_26: Path) -> None:
    result = run_child(
        RUN_TESTS, URLLIB3_1_26, *HTTP_TESTS, "-p", "no:cacheprovider", "-q", extra_path=urllib3_1_26, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"exit {result.returncode} under urllib3 {URLLIB3_1_26}:\n{output[-6000:]}"
    assert output.startswith(f"{URLLIB3_1_26} {urllib3_1_26}"), output[:300]
    # Every test ran and passed: nothing skipped, xfailed or deselected.
    summary = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed(, \d+ warnings?)? in [\d.]+s( \([\d:]+\))?", summary), summary


def test_the_venvs_own_urllib3_is_2_x() -> None:
    # The rest of the suite runs on it: this only checks that it is the other line.
    version = importlib.metadata.version("urllib3")
    assert version.startswith("2.")
    result = run_child(VERSION_CHECK, version, extra_path=None, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split()[0] == version
