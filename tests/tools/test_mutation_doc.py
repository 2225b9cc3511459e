"""docs/mutation.md (written by `make mutation`, tools/mutation.py) holds for the sources as they are: its
recorded hash is the one of today's layer modules and handlers, and its scores meet the bar."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools import mutation

DOCUMENT = mutation.DOCUMENT
ROW = re.compile(r"^\| (?:`([\w/.]+)`|\*\*all layer modules\*\*) \|(?: [\d]+ \|){5} ([\d.]+)% \|$", re.MULTILINE)


def document() -> str:
    assert DOCUMENT.exists(), "docs/mutation.md is missing: run make mutation"
    return DOCUMENT.read_text(encoding="utf-8")


def scores(text: str) -> dict[str, float]:
    """module -> score; the layer's total under the key `layer`."""
    return {match.group(1) or "layer": float(match.group(2)) for match in ROW.finditer(text)}


def test_the_document_measured_the_current_sources() -> None:
    recorded = mutation.recorded_digest(document())
    assert recorded == mutation.source_digest(), (
        "the layer or a handler changed since docs/mutation.md was measured: run make mutation"
    )


def test_every_source_has_a_row() -> None:
    rows = scores(document())
    assert {source.label for source in mutation.measured_sources()} <= set(rows)


def test_the_layer_and_each_core_module_reach_the_target() -> None:
    rows = scores(document())
    below = {
        name: rows.get(name, 0.0)
        for name in ("layer", *mutation.CORE_MODULES)
        if rows.get(name, 0.0) < mutation.TARGET_PERCENT
    }
    assert not below, f"mutation scores below {mutation.TARGET_PERCENT}%: {below}"


def test_every_survivor_is_explained() -> None:
    text = document()
    assert ": **unexplained**" not in text
    assert "**Target met**" in text


# --- the checks themselves ---------------------------------------------------------------------------------


def test_the_digest_changes_with_any_measured_source(tmp_path: Path) -> None:
    layer = tmp_path / "layers" / "usage_engine" / "usage_engine"
    layer.mkdir(parents=True)
    (layer / "token.py").write_text("A = 1\n", encoding="utf-8")
    for name in mutation.HANDLERS:
        handler = tmp_path / "functions" / name / "app.py"
        handler.parent.mkdir(parents=True)
        handler.write_text("B = 2\n", encoding="utf-8")
    before = mutation.source_digest(tmp_path)
    (tmp_path / "functions" / "meter_query" / "app.py").write_text("B = 3\n", encoding="utf-8")
    assert mutation.source_digest(tmp_path) != before
    (layer / "new_module.py").write_text("", encoding="utf-8")
    assert len({before, mutation.source_digest(tmp_path)}) == 2


def test_scores_are_read_from_the_rendered_table() -> None:
    tally = mutation.Tally("token", handler=False, counts={mutation.KILLED: 9, mutation.SURVIVED: 1})
    rendered = mutation.render([tally], [], digest="0" * 64, seconds=None, workers=2)
    assert scores(rendered) == {"token": 90.0, "layer": 90.0}
    assert mutation.recorded_digest(rendered) == "0" * 64


def test_an_unexplained_survivor_fails_the_target() -> None:
    tally = mutation.Tally("token", handler=False, counts={mutation.KILLED: 99, mutation.SURVIVED: 1})
    survivor = mutation.Survivor("token", "k", mutation.SURVIVED, "f", 3, "a < b", "a <= b", reason=None)
    rendered = mutation.render([tally], [survivor], digest="0" * 64, seconds=None, workers=2)
    assert ": **unexplained**" in rendered
    assert "**Target not met**" in rendered


@pytest.mark.parametrize("exit_code", [1, 3, -11])
def test_a_failing_test_run_is_a_kill(exit_code: int) -> None:
    assert mutation.status_of(exit_code) == mutation.KILLED
