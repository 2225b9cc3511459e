"""The row check: every row's structured columns, asserted the same way for every row."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests import leak_guard
from tests.conftest import Deployment
from tests.reliability import matrix
from tests.reliability.harness.context import SCENARIOS, Ctx, Observation, access_token
from tests.reliability.harness.query import error_code, header
from usage_engine import RefreshFailedError


def check(row: matrix.Row, obs: Observation, deployment: Deployment) -> None:
    if row.http is not None:
        check_answer(row, row.http, obs)
    elif row.sqs is None:
        if row.error is None:
            assert obs.error is None, f"unexpected {obs.error!r}"
        else:
            assert isinstance(obs.error, RefreshFailedError), f"expected RefreshFailedError, got {obs.error!r}"
            assert type(obs.error.cause).__name__ == row.error
            assert "left untouched" in str(obs.error)
    else:
        assert obs.error is None
        assert obs.fate is not None
        assert obs.fate.outcome == row.sqs, f"record {obs.fate.outcome}, expected {row.sqs}"
        if row.error is None:
            assert obs.errors_seen == []
        else:
            assert row.error in obs.errors_seen, obs.errors_seen
        if obs.fate.outcome == matrix.DLQ:
            assert row.log_detail in (obs.fate.reason or "")

    if row.token == matrix.UNTOUCHED:
        assert obs.after == obs.before, "the stored token changed"
        assert obs.versions_after == obs.versions_before
    elif row.token == matrix.REPLACED:
        assert obs.versions_after == obs.versions_before + 1
        assert access_token(obs.after) == deployment.emulator.issued_tokens[-1]
        assert access_token(obs.after) != access_token(obs.before)
    else:
        assert row.token == matrix.NONE_STORED
        assert obs.after is None

    explaining = [line for line in obs.out.logs if line.get("message") == row.log]
    assert explaining, f"no {row.log!r} log line in {[line.get('message') for line in obs.out.logs]}"
    assert any(row.log_detail in json.dumps(line) for line in explaining), explaining
    assert (obs.out.metric(row.metric) or 0) >= 1, f"metric {row.metric} not emitted"

    texts = [
        str(obs.error or ""),
        json.dumps(obs.returned),
        json.dumps(obs.out.lines),
        obs.fate.reason if obs.fate and obs.fate.reason else "",
    ]
    assert leak_guard.find_leaks("\n".join(texts)) == []


def check_answer(row: matrix.Row, http: matrix.Http, obs: Observation) -> None:
    """A meter_query row: the handler answered (it never raises), with the row's status, error code and
    Retry-After, and the typed error it mapped to that answer."""
    assert obs.error is None, f"meter_query raised {obs.error!r}"
    answer = obs.returned
    assert isinstance(answer, dict), answer
    assert answer["statusCode"] == http.status, f"answered {answer['statusCode']}: {answer.get('body')}"
    assert error_code(answer) == http.code, answer.get("body")
    assert (header(answer, "Retry-After") is not None) == http.retry_after, answer.get("headers")
    if row.error is None:
        assert obs.errors_seen == [], obs.errors_seen
    else:
        assert row.error in obs.errors_seen, obs.errors_seen


def rows_of(part: str) -> list[Any]:
    """The rows of one part of the matrix as pytest parameters. A known bug is a strict xfail that only a failed
    assertion satisfies: a row that cannot run at all (an error in the setup) is reported, not excused."""
    return [
        pytest.param(
            row,
            id=row.id,
            marks=[pytest.mark.xfail(strict=True, raises=AssertionError, reason=row.known_bug)]
            if row.known_bug
            else [],
        )
        for row in matrix.ROWS
        if row.part == part
    ]


def run_row(row: matrix.Row, ctx: Ctx) -> None:
    obs = SCENARIOS[row.id](ctx)
    check(row, obs, ctx.deployment)
