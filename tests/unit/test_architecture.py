"""The layer's module graph: acyclic at import time, and the composition root is the only module that wires
the others together (every other module depends only on modules below it)."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "layers" / "usage_engine" / "usage_engine"


def import_time_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports at import time (top-level statements, TYPE_CHECKING aside)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found: set[str] = set()
        for node in tree.body:  # top level only: deferred imports inside functions run at call time
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
        graph[path.stem] = found
    return graph


def test_every_relative_import_names_a_module_of_the_package() -> None:
    graph = import_time_graph()
    unknown = {(module, imported) for module, imports in graph.items() for imported in imports if imported not in graph}
    assert not unknown


def test_the_import_graph_is_acyclic() -> None:
    try:
        order = list(TopologicalSorter(import_time_graph()).static_order())
    except CycleError as error:  # pragma: no cover - the failure message is the cycle
        pytest.fail(f"import cycle: {error.args[1]}")
    assert set(order) == set(import_time_graph())


def test_the_package_itself_imports_nothing_but_its_version() -> None:
    # Its public names load lazily (tests/unit/test_public_api.py): a function imports only what it uses.
    assert import_time_graph()["__init__"] == {"version"}


def test_only_the_composition_root_builds_aws_clients() -> None:
    graph = import_time_graph()
    users = {module for module, imports in graph.items() if "aws_clients" in imports}
    assert users == {"composition"}


def test_a_cycle_would_be_found() -> None:
    # The check itself can fail: a graph with a cycle is refused.
    with pytest.raises(CycleError):
        list(TopologicalSorter({"a": {"b"}, "b": {"a"}}).static_order())


def test_every_public_error_type_lives_in_errors_py() -> None:
    # One place to learn what the layer raises; private control-flow exceptions may stay where they are used.
    outside: list[str] = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem == "errors":
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {getattr(base, "id", getattr(base, "attr", "")) for base in node.bases}
                if any(name.endswith(("Error", "Exception")) for name in bases):
                    outside.append(f"{path.stem}.{node.name}")
    assert outside == []
