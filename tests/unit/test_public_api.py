"""The package's public names: one list, three places (the lazy export map, __all__ and the imports type checkers
read), every name resolving to the object its module defines, and importing one loads only what it needs."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import usage_engine

PACKAGE_INIT = Path(usage_engine.__file__)


def _type_checking_imports() -> dict[str, str]:
    tree = ast.parse(PACKAGE_INIT.read_text(encoding="utf-8"))
    block = next(
        node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
    )
    return {
        alias.name: f".{node.module}" for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names
    }


def test_the_export_map_all_and_the_type_checking_imports_agree() -> None:
    exports = usage_engine._EXPORTS
    assert _type_checking_imports() == exports
    assert sorted(usage_engine.__all__) == sorted([*exports, "__version__"])


@pytest.mark.parametrize("name", sorted(usage_engine._EXPORTS))
def test_every_public_name_is_the_object_its_module_defines(name: str) -> None:
    module = importlib.import_module(usage_engine._EXPORTS[name], "usage_engine")
    assert getattr(usage_engine, name) is getattr(module, name)


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = usage_engine.no_such_name  # type: ignore[attr-defined]


def test_dir_lists_the_lazy_names_before_they_are_loaded() -> None:
    assert set(usage_engine._EXPORTS) <= set(dir(usage_engine))


def _modules_loaded_by(statement: str) -> set[str]:
    """The usage_engine modules a fresh interpreter has loaded after `statement`."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('usage_engine'))))"
    result = subprocess.run(  # noqa: S603 - this interpreter, our own code
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(PACKAGE_INIT.parent.parent)},
    )
    return set(json.loads(result.stdout))


def test_importing_the_package_loads_no_module_but_its_version() -> None:
    assert _modules_loaded_by("import usage_engine") == {"usage_engine", "usage_engine.version"}


def test_a_consumer_never_loads_the_refreshers_or_the_meter_events_modules() -> None:
    loaded = _modules_loaded_by("from usage_engine import components, UsageMeteringApi, deadline_scope")
    assert "usage_engine.api_client" in loaded  # the check can see what a consumer loads
    assert not loaded & {
        "usage_engine.refresher",
        "usage_engine.idp",
        "usage_engine.credentials",
        "usage_engine.meter_events",
        "usage_engine.meter_state",
        "usage_engine.meter_order",
        "usage_engine.dead_letter",
    }
