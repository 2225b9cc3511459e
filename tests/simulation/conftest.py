"""Prints the simulated day's report (tests/simulation/test_day.py) at the end of every pytest run that ran it,
whatever the capture settings: `make test` shows it without `-s`."""

from __future__ import annotations

from typing import Any

REPORTS: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORTS:
        return
    terminalreporter.section("simulated day")
    for report in REPORTS:
        for line in report.splitlines():
            terminalreporter.write_line(line)
