"""The fault matrix (tests/reliability/matrix.py) is covered exactly: one scenario per row, in the test module
of the row's part (test_idp_faults.py, test_secrets_manager_faults.py, test_api_faults.py).

Every row asserts the same columns the document shows (tests/reliability/harness/check.py): the typed
error, what the token secret holds afterwards, the SQS record's fate (never dropped), a log line that
explains the outcome, a metric, and that no secret reached any of it.
"""

from __future__ import annotations

from tests.reliability import matrix, test_api_faults, test_idp_faults, test_secrets_manager_faults
from tests.reliability.harness.context import SCENARIOS

MODULE_OF_PART = {
    matrix.IDP: test_idp_faults,
    matrix.SECRETS: test_secrets_manager_faults,
    matrix.API: test_api_faults,
}


def test_every_row_has_exactly_one_scenario() -> None:
    assert sorted(SCENARIOS) == sorted(row.id for row in matrix.ROWS)
    assert len({row.id for row in matrix.ROWS}) == len(matrix.ROWS)


def test_each_scenario_lives_in_the_module_of_its_part() -> None:
    assert set(MODULE_OF_PART) == set(matrix.PARTS)
    for row in matrix.ROWS:
        assert SCENARIOS[row.id].__module__ == MODULE_OF_PART[row.part].__name__, row.id
