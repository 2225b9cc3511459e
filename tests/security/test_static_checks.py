"""Static security checks, part of `make test` through pytest: bandit on the code that ships (layer and
functions), and the layer's pinned runtime requirements audited for known vulnerabilities with pip-audit.

pip-audit asks PyPI's JSON API (a package registry, the only network this suite may use) for each pin's
known vulnerabilities. The test skips, saying why, only when that database cannot be reached or has no
answer for any pin; a vulnerability, a pin PyPI does not know while it knows others, or a failing tool
fails it.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYER_REQUIREMENTS = ROOT / "layers" / "usage_engine" / "requirements.txt"
SHIPPED_CODE = ("layers/usage_engine/usage_engine", "functions")

# Like ruff's S105/S106 (ignored in pyproject.toml), bandit's hardcoded-password checks flag every string
# and argument named *token* in a token library ("Bearer", the token endpoint URL). Secrets are guarded by
# the leak guard and the secret-scanning tests instead.
BANDIT_SKIPS = ("B105", "B106")

NETWORK_TROUBLE = re.compile(
    r"ConnectionError|ConnectTimeout|ReadTimeout|NameResolutionError|Max retries exceeded|"
    r"Temporary failure in name resolution|Network is unreachable|Connection refused|SSLError",
)
# pip-audit's PyPI service says this when the registry has no JSON for name/version.
NOT_ON_PYPI = "Dependency not found on PyPI"


def run_tool(module: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # The tools run from this interpreter's environment (.venv), never from whatever is on PATH.
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed in {sys.prefix}: it belongs in requirements-dev.txt")
    return subprocess.run(  # noqa: S603 - fixed arguments, no shell
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_bandit_finds_nothing_in_the_code_that_ships() -> None:
    result = run_tool("bandit", "-r", *SHIPPED_CODE, "--format", "json", "--quiet", "--skip", ",".join(BANDIT_SKIPS))
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["errors"] == [], report["errors"]
    issues = [
        f"{issue['filename']}:{issue['line_number']} {issue['test_id']} ({issue['issue_severity']}): "
        f"{issue['issue_text']}"
        for issue in report["results"]
    ]
    assert issues == [], "bandit:\n" + "\n".join(issues)
    assert result.returncode == 0, result.stderr
    scanned = report["metrics"]["_totals"]["loc"]
    assert scanned > 1000, f"bandit scanned only {scanned} lines: are the paths right?"


def test_bandit_runs_on_the_layer_and_the_functions() -> None:
    # Guards the check above against scanning nothing (a wrong path makes bandit report zero issues).
    result = run_tool("bandit", "-r", *SHIPPED_CODE, "--format", "json", "--quiet")
    report = json.loads(result.stdout)
    files = {Path(name).as_posix() for name in report["metrics"] if name != "_totals"}
    assert any(name.endswith("usage_engine/token.py") for name in files)
    assert any(name.endswith("functions/token_refresher/app.py") for name in files)


def test_the_layer_requirements_are_exact_pins() -> None:
    # pip-audit --no-deps audits exactly these lines, so each must name one version.
    lines = [line.split("#", 1)[0].strip() for line in LAYER_REQUIREMENTS.read_text().splitlines()]
    pins = [line for line in lines if line]
    assert pins
    loose = [
        line for line in pins if not re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[A-Za-z0-9_,\-]+\])?==[A-Za-z0-9_.+\-]+", line)
    ]
    assert loose == []


def test_the_layer_requirements_have_no_known_vulnerabilities() -> None:
    try:
        result = audit_layer_requirements()
    except subprocess.TimeoutExpired:
        pytest.skip("vulnerability database (PyPI JSON API) unreachable: pip-audit timed out")
    if result.returncode != 0 and not result.stdout.strip():
        trouble = NETWORK_TROUBLE.search(result.stderr)
        if trouble:
            pytest.skip(f"vulnerability database (PyPI JSON API) unreachable: {trouble.group(0)}")
        pytest.fail(f"pip-audit failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    report = json.loads(result.stdout)
    dependencies = report["dependencies"]
    assert dependencies, "pip-audit audited nothing"
    unanswered = [d for d in dependencies if NOT_ON_PYPI in d.get("skip_reason", "")]
    if len(unanswered) == len(dependencies):
        pytest.skip(
            f"vulnerability database has no answer for any of the {len(dependencies)} pins "
            f"(PyPI's per-version JSON is not reachable from here), e.g. {unanswered[0]['skip_reason']}"
        )
    skipped = [f"{d['name']}: {d['skip_reason']}" for d in dependencies if "skip_reason" in d]
    assert skipped == [], "pins pip-audit could not audit while the database answered for others"
    found = [
        f"{d['name']}=={d['version']}: "
        + ", ".join(f"{v['id']} (fixed in {', '.join(v['fix_versions']) or 'no release yet'})" for v in d["vulns"])
        for d in dependencies
        if d.get("vulns")
    ]
    assert found == [], "known vulnerabilities in the layer's pins:\n" + "\n".join(found)


def audit_layer_requirements() -> subprocess.CompletedProcess[str]:
    # PyPI's JSON API only (the default service): the one vulnerability database on a package registry.
    return run_tool(
        "pip_audit",
        "--requirement",
        str(LAYER_REQUIREMENTS),
        "--no-deps",
        "--disable-pip",
        "--vulnerability-service",
        "pypi",
        "--format",
        "json",
        "--progress-spinner",
        "off",
        "--timeout",
        "10",
        timeout=90,
    )
