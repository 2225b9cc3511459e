"""The reliability tier's fixtures; they live in tests/reliability/harness/fixtures.py."""

from tests.reliability.harness.fixtures import (
    backoff,
    blackhole_port,
    closed_port,
    ctx,
    function_output,
    resetting_port,
    secrets_faults,
    sqs_faults,
)

__all__ = [
    "backoff",
    "blackhole_port",
    "closed_port",
    "ctx",
    "function_output",
    "resetting_port",
    "secrets_faults",
    "sqs_faults",
]
