"""pytest plugin: fail any test whose output, metrics, handler results or failure report contain a secret.

Secrets are registered as they come into being: the client secret when a fixture creates it, every
access token when the Usage Engine emulator issues it (tests/conftest.py registers what every emulator in
the process knows and issues). For every phase of every test, these are scanned:

* the captured stdout/stderr/log sections, where Powertools' JSON logs and EMF metric documents land;
* what a test took out of capture with capsys/capfd (`readouterr()`), so reading output hides nothing;
* every value handed to `inspect()`: tests/conftest.py hands it each Lambda handler's return value and the
  message of each exception a handler raises, so a leak a test catches with `pytest.raises` still counts;
* the failure report.

A hit fails the test and the report is redacted, so the secret does not reach the terminal either.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections.abc import Callable, Generator
from typing import Any

import pytest

_forbidden: set[str] = set()
_hits: list[tuple[str, str]] = []
_lock = threading.Lock()
# Shorter values would match by accident (and are not real secrets).
MIN_LENGTH = 8

Handler = Callable[[Any, Any], Any]


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


def inspect(value: Any, where: str) -> None:
    """Scan a value that leaves the code under test (a return value, an error message, a metric); a hit
    fails the test that is running, naming `where`."""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, default=repr)
    leaks = find_leaks(text)
    if leaks:
        with _lock:
            _hits.extend((where, fingerprint) for fingerprint in leaks)


def guard_handler(handler: Handler) -> Handler:
    """Wrap a Lambda handler so its return value and the message of any exception it raises are inspected."""
    if getattr(handler, "__leak_guarded__", False):
        return handler

    @functools.wraps(handler)
    def guarded(event: Any, context: Any) -> Any:
        try:
            result = handler(event, context)
        except BaseException as error:
            inspect(f"{type(error).__name__}: {error}", "a handler's exception message")
            raise
        inspect(result, "a handler's return value")
        return result

    guarded.__leak_guarded__ = True  # type: ignore[attr-defined]
    return guarded


def _take_hits() -> list[tuple[str, str]]:
    with _lock:
        hits = list(_hits)
        _hits.clear()
    return hits


def pytest_configure(config: pytest.Config) -> None:
    # Text a test reads with capsys/capfd never reaches the report sections: inspect it as it is read.
    read = pytest.CaptureFixture.readouterr
    if getattr(read, "__leak_guarded__", False):
        return

    def readouterr(self: pytest.CaptureFixture[Any]) -> Any:
        captured = read(self)
        inspect(captured.out, "output read with capsys/capfd")
        inspect(captured.err, "error output read with capsys/capfd")
        return captured

    readouterr.__leak_guarded__ = True  # type: ignore[attr-defined]
    pytest.CaptureFixture.readouterr = readouterr  # type: ignore[method-assign]


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
    hits = _take_hits()
    places += sorted({where for where, _ in hits})
    if not places:
        return
    leaked = sorted(
        {fp for _, content in own for fp in find_leaks(content)}
        | set(find_leaks(report.longreprtext))
        | {fp for _, fp in hits}
    )
    report.outcome = "failed"
    report.longrepr = (
        f"SECRET LEAK: {len(leaked) or 'a'} secret value(s) (sha256 prefixes {', '.join(leaked) or 'n/a'}) "
        f"appeared in: {', '.join(places)}. Output redacted."
    )
    report.sections = [(name, "<redacted by leak guard>") for name, _ in report.sections]
