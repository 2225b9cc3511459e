"""pytest plugin: every test carries a marker named after its tier, the folder it lives in under tests/.

tests/unit/test_token.py gets `unit`, tests/property/... gets `property`, tests/build/... gets `build`, and so
on, so a run can pick tiers with `-m` (`make unit` runs `-m "unit or property"`). The markers are registered
in pyproject.toml and --strict-markers is on, so a new tier folder fails collection until its marker is
registered there. A test module directly in tests/ (outside any tier) fails collection too: every test
belongs to a tier. Tests outside tests/ (pytester's temporary projects) are left alone.

With REQUIRE_BUILD_ARTIFACTS=1 (`make pytest` sets it), a run whose selection holds no test of the `build`
tier is an error: that tier must not drop out unnoticed (pytest's default norecursedirs skips any folder named
"build", which pyproject.toml overrides for this reason).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
BUILD_TIER = "build"


def tier_of(path: Path) -> str | None:
    """The tier of a test file: the first folder below tests/, or None for a file outside tests/."""
    try:
        relative = path.resolve().relative_to(TESTS_DIR)
    except ValueError:
        return None
    if len(relative.parts) < 2:
        raise pytest.UsageError(f"{path}: every test module lives in a tier folder under tests/ (tests/unit, ...)")
    return relative.parts[0]


def registered_markers(config: pytest.Config) -> set[str]:
    """The marker names of the `markers` ini option ("name: description" or "name(args): description")."""
    return {line.split(":")[0].split("(")[0].strip() for line in config.getini("markers")}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # tryfirst: the markers are on the items before `-m` deselects (pytest's own hook in the mark plugin).
    registered = registered_markers(config)
    tiers: dict[Path, str | None] = {}
    for item in items:
        if item.path not in tiers:
            tier = tiers[item.path] = tier_of(item.path)
            if tier is not None and tier not in registered:
                raise pytest.UsageError(
                    f"tests/{tier}/ is a tier without a marker: register `{tier}` in pyproject.toml "
                    "([tool.pytest.ini_options] markers)"
                )
        tier = tiers[item.path]
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))


def pytest_collection_finish(session: pytest.Session) -> None:
    # After deselection: session.items is what will run.
    if os.environ.get("REQUIRE_BUILD_ARTIFACTS") != "1":
        return
    if not any(item.get_closest_marker(BUILD_TIER) for item in session.items):
        raise pytest.UsageError(
            f"REQUIRE_BUILD_ARTIFACTS=1, but no test of the {BUILD_TIER} tier (tests/{BUILD_TIER}) was collected"
        )
