"""The leak guard itself: a test that prints a registered secret must fail, and the secret stays hidden."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

LEAKING_TEST = """
import logging
from tests import leak_guard

SECRET = "leaky-secret-value-0123456789"
leak_guard.forbid(SECRET)

def test_prints_secret():
    print("token is", SECRET)

def test_logs_secret():
    logging.getLogger("x").warning("secret=%s", SECRET)

def test_fails_with_secret_in_message():
    assert SECRET == "something else"

def test_clean():
    print("nothing to see")
"""


@pytest.mark.leaks_on_purpose
def test_a_leaking_test_fails_and_is_redacted(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    # A separate process: the leaking run must not register its secret in this run's guard.
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(test_leaky=LEAKING_TEST)
    result = pytester.runpytest_subprocess("-p", "tests.leak_guard", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=3)
    output = result.stdout.str()
    assert "SECRET LEAK" in output
    assert "leaky-secret-value-0123456789" not in output
