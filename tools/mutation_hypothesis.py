"""A pytest plugin for the mutation run only (tools/mutation.py passes `-p mutation_hypothesis`): Hypothesis
without health checks, deadlines or its example database, and derandomized.

Under mutmut every function call goes through a trampoline, so data generation runs slower than in `make unit`
and the too-slow health check or a deadline would fail a test whatever the mutant: a kill that proves nothing.
Without the database a failing example found for one mutant is not replayed against the next, and
derandomized runs give the same verdicts every time."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "mutation", suppress_health_check=list(HealthCheck), deadline=None, database=None, derandomize=True
)
settings.load_profile("mutation")
