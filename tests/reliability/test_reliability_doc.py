"""docs/reliability.md is exactly what tools/render_reliability.py renders from the fault matrix."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from tests.reliability import matrix

ROOT = Path(__file__).resolve().parents[2]


def renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_reliability", ROOT / "tools" / "render_reliability.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_document_is_the_rendered_matrix() -> None:
    document = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    assert document == renderer().render(), "docs/reliability.md is stale: run python tools/render_reliability.py"


def test_every_row_and_every_known_bug_appears_in_the_document() -> None:
    document = renderer().render()
    for row in matrix.ROWS:
        assert row.fault.replace("|", "\\|") in document
        if row.known_bug:
            assert row.known_bug.split(":", 1)[0] in document


def test_check_mode_reports_a_stale_document(tmp_path: Path) -> None:
    module = renderer()
    stale = tmp_path / "reliability.md"
    stale.write_text("# edited by hand\n", encoding="utf-8")
    module.DOCUMENT = stale
    module.ROOT = tmp_path
    assert module.main(["--check"]) == 1
    assert module.main([]) == 0
    assert module.main(["--check"]) == 0
