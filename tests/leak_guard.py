"""pytest plugin: fail any test whose captured output or failure report contains a secret.

Secrets are registered as they come into being: the client secret when a fixture creates it, every
access token when the Usage Engine emulator issues it. Every phase's captured stdout/stderr/log sections
(where Powertools' JSON logs and EMF metrics land) and the failure text are scanned; a hit fails the test
and the report is redacted, so the secret does not reach the terminal either.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Generator

import pytest

_forbidden: set[str] = set()
_lock = threading.Lock()
# Shorter values would match by accident (and are not real secrets).
MIN_LENGTH = 8


def forbid(value: str) -> None:
    if len(value) >= MIN_LENGTH:
        with _lock:
            _forbidden.add(value)


def forbidden() -> frozenset[str]:
    with _lock:
        return frozenset(_forbidden)


def find_leaks(text: str) -> list[str]:
    """Fingerprints of the forbidden values that occur in `text`."""
    return sorted(hashlib.sha256(v.encode()).hexdigest()[:16] for v in forbidden() if v in text)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    # Sections accumulate over setup/call/teardown; each phase answers for its own.
    own = [(name, content) for name, content in report.sections if name.endswith(f" {report.when}")]
    places = [name for name, content in own if find_leaks(content)]
    if report.longrepr is not None and find_leaks(report.longreprtext):
        places.append("failure report")
    if not places:
        return
    leaked = sorted({fp for _, content in own for fp in find_leaks(content)} | set(find_leaks(report.longreprtext)))
    report.outcome = "failed"
    report.longrepr = (
        f"SECRET LEAK: {len(leaked) or 'a'} secret value(s) (sha256 prefixes {', '.join(leaked) or 'n/a'}) "
        f"appeared in: {', '.join(places)}. Output redacted."
    )
    report.sections = [(name, "<redacted by leak guard>") for name, _ in report.sections]
