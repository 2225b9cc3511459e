"""The layer's self-healing, visible through standard logging: each recovery step is one record under the
`usage_engine` logger with its facts as extra fields, INFO while it heals and WARNING when it holds off or
cannot heal, and no record carries a token, a secret or an Authorization header. A handler's Powertools
Logger renders those records as JSON (`structured_layer_logs`); `publish_api_calls` takes the client itself.

The real TokenRecovery and UsageEngineClient run with the fakes of test_recovery.py and test_api_client.py
(the token secret, the refresher) and the Usage Engine emulator on loopback.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from aws_lambda_powertools import Logger

from local.usage_engine_emulator import UsageEngineEmulator
from tests.unit.test_api_client import FakeRefresher, FakeSecrets, client_for, issue
from tests.unit.test_recovery import Clock, Refresher, Secrets, recovery, token
from usage_engine import (
    AccessToken,
    AuthenticationError,
    RefreshAnswer,
    RefreshHoldOffError,
    RefreshUnavailableError,
    encode_token,
)
from usage_engine.metering import METERS_PATH
from usage_engine.observability import LAYER_LOGGER, publish_api_calls, structured_layer_logs
from usage_engine.recovery import REFRESH_HOLD_OFF_SECONDS
from usage_engine.states import RefreshResult

# Distinctive values: if any of them shows up in a record, the record leaks.
OLD_TOKEN = "old-token-value-3c9f1e7a2b"
NEW_TOKEN = "new-token-value-8d2a6b0f4e"
BOGUS_TOKEN = "bogus-token-value-5e7c1d9a"
CLIENT_SECRET = "unit-secret-123"  # test_api_client's emulator client

REJECTED = "Usage Engine API rejected the token; replacing it"
RESENT = "Resent with a replacement token"
NOT_REPLACED = "Rejected token not replaced"
REJECTED_TOO = "Usage Engine API rejected the replacement token too"
ALREADY_REPLACED = "Token secret already holds a replacement for the rejected token"
ASKED = "Asked the token refresher"
REREAD = "Re-read the token secret after a refresh"
EXPIRED = "Stored token expired or about to"
HOLDING_OFF = "On-demand refresh failed; holding off"
HELD_OFF = "Holding off on-demand refreshes: no token for this call"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def named(self, message: str) -> list[logging.LogRecord]:
        return [record for record in self.records if record.getMessage() == message]

    def one(self, message: str) -> logging.LogRecord:
        found = self.named(message)
        assert len(found) == 1, f"{len(found)} records {message!r} in {[r.getMessage() for r in self.records]}"
        return found[0]


@pytest.fixture
def layer_logger() -> Iterator[logging.Logger]:
    """The layer's logger, as it was before the test afterwards: a handler module may have configured it."""
    layer = logging.getLogger(LAYER_LOGGER)
    saved = layer.level, layer.propagate, list(layer.handlers)
    yield layer
    layer.setLevel(saved[0])
    layer.propagate = saved[1]
    layer.handlers = saved[2]


@pytest.fixture
def logs(layer_logger: logging.Logger) -> Records:
    # Its own handler rather than caplog's on the root logger: whether the layer's records propagate there
    # depends on whether a handler module has called structured_layer_logs in this process.
    records = Records()
    layer_logger.handlers = [records]
    layer_logger.propagate = False
    layer_logger.setLevel(logging.DEBUG)
    return records


def fields(record: logging.LogRecord, *names: str) -> dict[str, Any]:
    return {name: record.__dict__.get(name, "<missing>") for name in names}


def assert_nothing_secret(records: list[logging.LogRecord], *values: str) -> None:
    assert records
    for record in records:
        text = record.getMessage() + json.dumps(record.__dict__, default=str)
        for value in (*values, CLIENT_SECRET, "Bearer ", "Authorization"):
            assert value not in text, f"{value!r} in the record {record.getMessage()!r}"


def named_token(value: str, *, expires_in: float = 3600) -> AccessToken:
    return token(value, expires_in=expires_in)


# --- recovery steps ---------------------------------------------------------------------------------------


def test_a_refresh_after_a_rejection_logs_the_answer_and_each_re_read_until_the_fingerprint_matches(
    logs: Records,
) -> None:
    clock = Clock()
    old, new = named_token(OLD_TOKEN), named_token(NEW_TOKEN)
    secrets = Secrets(old, old, old, new)  # first read, re-read after the 401, one lagging read, then the new one
    subject = recovery(secrets, Refresher(RefreshAnswer(RefreshResult.REFRESHED, new.fingerprint)), clock)
    subject.usable_token()

    assert subject.replace_rejected(old) == new

    asked = logs.one(ASKED)
    assert asked.levelno == logging.INFO
    assert fields(asked, "reason", "answer", "refreshed", "token_fingerprint", "rejected_fingerprint", "attempt") == {
        "reason": "rejected",
        "answer": "refreshed",
        "refreshed": True,
        "token_fingerprint": new.fingerprint,
        "rejected_fingerprint": old.fingerprint,
        "attempt": 1,
    }
    rereads = logs.named(REREAD)
    assert [fields(r, "expected_fingerprint", "token_fingerprint", "matched", "read") for r in rereads] == [
        {"expected_fingerprint": new.fingerprint, "token_fingerprint": old.fingerprint, "matched": False, "read": 1},
        {"expected_fingerprint": new.fingerprint, "token_fingerprint": new.fingerprint, "matched": True, "read": 2},
    ]
    assert {r.levelno for r in rereads} == {logging.INFO}
    assert_nothing_secret(logs.records, OLD_TOKEN, NEW_TOKEN)


def test_a_replacement_another_container_stored_is_logged_without_a_refresher_call(logs: Records) -> None:
    clock = Clock()
    old, new = named_token(OLD_TOKEN), named_token(NEW_TOKEN)
    refresher = Refresher(RefreshAnswer(RefreshResult.REFRESHED))
    subject = recovery(Secrets(old, new), refresher, clock)
    subject.usable_token()

    assert subject.replace_rejected(old) == new

    record = logs.one(ALREADY_REPLACED)
    assert record.levelno == logging.INFO
    assert fields(record, "rejected_fingerprint", "token_fingerprint") == {
        "rejected_fingerprint": old.fingerprint,
        "token_fingerprint": new.fingerprint,
    }
    assert (refresher.calls, logs.named(ASKED)) == ([], [])
    assert_nothing_secret(logs.records, OLD_TOKEN, NEW_TOKEN)


def test_an_expired_token_on_read_is_logged_by_fingerprint_before_the_on_demand_refresh(logs: Records) -> None:
    clock = Clock()
    expired, fresh = named_token(OLD_TOKEN, expires_in=-100), named_token(NEW_TOKEN)
    subject = recovery(
        Secrets(expired, fresh), Refresher(RefreshAnswer(RefreshResult.REFRESHED, fresh.fingerprint)), clock
    )

    assert subject.usable_token() == fresh

    record = logs.one(EXPIRED)
    assert record.levelno == logging.INFO
    assert fields(record, "token_fingerprint", "expires_in_seconds", "expiry_skew_seconds") == {
        "token_fingerprint": expired.fingerprint,
        "expires_in_seconds": -100,
        "expiry_skew_seconds": 60,
    }
    assert fields(logs.one(ASKED), "reason", "rejected_fingerprint") == {
        "reason": "expired",
        "rejected_fingerprint": None,
    }
    assert logs.records.index(record) < logs.records.index(logs.one(ASKED))
    assert_nothing_secret(logs.records, OLD_TOKEN, NEW_TOKEN)


def test_a_failed_refresh_warns_when_it_holds_off_and_on_every_call_it_fails_meanwhile(logs: Records) -> None:
    clock = Clock()
    subject = recovery(
        Secrets(named_token(OLD_TOKEN, expires_in=-10)),
        Refresher(RefreshUnavailableError("the token refresher failed: RefreshFailedError")),
        clock,
    )
    with pytest.raises(RefreshUnavailableError):
        subject.usable_token()

    entered = logs.one(HOLDING_OFF)
    assert entered.levelno == logging.WARNING
    assert fields(entered, "reason", "failed_refreshes", "error_type", "error") == {
        "reason": "expired",
        "failed_refreshes": 1,
        "error_type": "RefreshUnavailableError",
        "error": "the token refresher failed: RefreshFailedError",
    }
    assert 0.75 * REFRESH_HOLD_OFF_SECONDS <= entered.retry_after_seconds <= REFRESH_HOLD_OFF_SECONDS

    clock.now += 5
    with pytest.raises(RefreshHoldOffError) as caught:
        subject.usable_token()
    active = logs.one(HELD_OFF)
    assert active.levelno == logging.WARNING
    assert fields(active, "reason", "retry_after_seconds") == {
        "reason": "expired",
        "retry_after_seconds": round(caught.value.retry_after_seconds, 1),
    }
    assert active.retry_after_seconds == pytest.approx(entered.retry_after_seconds - 5, abs=0.1)
    assert_nothing_secret(logs.records, OLD_TOKEN)


# --- the client: a 401 and its resend ----------------------------------------------------------------------


@pytest.fixture
def emulator(emulator_server: UsageEngineEmulator) -> UsageEngineEmulator:
    emulator_server.reset()
    emulator_server.add_client("unit", CLIENT_SECRET)
    return emulator_server


class BogusRefresher(FakeRefresher):
    """Stores a token the API has never issued: the resend is rejected too."""

    def request(self, reason: str, token_fingerprint: str | None = None) -> Any:
        self.calls.append((reason, token_fingerprint))
        self.secrets.value = encode_token(named_token(BOGUS_TOKEN))
        return "refreshed"


def test_a_rejected_token_healed_on_resend_is_logged_at_info_from_the_401_to_the_resend(
    emulator: UsageEngineEmulator, logs: Records
) -> None:
    secrets = FakeSecrets()
    secrets.value = encode_token(issue(emulator))
    client = client_for(emulator, secrets, FakeRefresher(secrets, emulator))
    old = client.tokens.get()
    emulator.revoke_all_tokens()

    assert client.request("GET", METERS_PATH).status_code == 200

    new = client.tokens.get()
    rejected, resent = logs.one(REJECTED), logs.one(RESENT)
    assert (rejected.levelno, resent.levelno) == (logging.INFO, logging.INFO)
    assert fields(rejected, "method", "path", "rejected_fingerprint") == {
        "method": "GET",
        "path": METERS_PATH,
        "rejected_fingerprint": old.fingerprint,
    }
    assert fields(resent, "rejected_fingerprint", "token_fingerprint", "status") == {
        "rejected_fingerprint": old.fingerprint,
        "token_fingerprint": new.fingerprint,
        "status": 200,
    }
    assert fields(logs.one(ASKED), "reason", "answer", "refreshed") == {
        "reason": "rejected",
        "answer": "refreshed",
        "refreshed": True,
    }
    assert not [record for record in logs.records if record.levelno >= logging.WARNING]
    assert_nothing_secret(logs.records, old.value, new.value)


def test_a_rejection_that_cannot_be_healed_warns_with_the_reason(emulator: UsageEngineEmulator, logs: Records) -> None:
    secrets = FakeSecrets()
    secrets.value = encode_token(issue(emulator))
    client = client_for(emulator, secrets, None)  # no on-demand refresh: the secret still holds the rejected token
    old = client.tokens.get()
    emulator.revoke_all_tokens()

    with pytest.raises(AuthenticationError):
        client.request("GET", METERS_PATH)

    record = logs.one(NOT_REPLACED)
    assert record.levelno == logging.WARNING
    assert fields(record, "rejected_fingerprint", "error_type") == {
        "rejected_fingerprint": old.fingerprint,
        "error_type": "TokenRejectedError",
    }
    assert "on-demand refresh is off" in record.error
    assert logs.named(RESENT) == []
    assert_nothing_secret(logs.records, old.value)


def test_a_replacement_rejected_too_warns_with_both_fingerprints(emulator: UsageEngineEmulator, logs: Records) -> None:
    secrets = FakeSecrets()
    secrets.value = encode_token(issue(emulator))
    client = client_for(emulator, secrets, BogusRefresher(secrets, emulator))
    old = client.tokens.get()
    emulator.revoke_all_tokens()

    with pytest.raises(AuthenticationError, match="rejected too"):
        client.request("GET", METERS_PATH)

    record = logs.one(REJECTED_TOO)
    assert record.levelno == logging.WARNING
    assert fields(record, "rejected_fingerprint", "token_fingerprint", "status") == {
        "rejected_fingerprint": old.fingerprint,
        "token_fingerprint": named_token(BOGUS_TOKEN).fingerprint,
        "status": 401,
    }
    assert logs.named(RESENT) == []
    assert_nothing_secret(logs.records, old.value, BOGUS_TOKEN)


def test_the_leak_check_itself_finds_a_token_in_a_record() -> None:
    record = logging.LogRecord("usage_engine.x", logging.INFO, __file__, 1, "m", None, None)
    record.token_value = OLD_TOKEN
    with pytest.raises(AssertionError, match="in the record"):
        assert_nothing_secret([record], OLD_TOKEN)


# --- what a consumer's handler sees -----------------------------------------------------------------------


def test_structured_layer_logs_renders_the_layers_records_as_json_with_their_fields(
    layer_logger: logging.Logger,
) -> None:
    stream = io.StringIO()
    structured_layer_logs(Logger(service="layer-logging-test", level="INFO", stream=stream))
    clock = Clock()
    subject = recovery(
        Secrets(named_token(OLD_TOKEN, expires_in=-10)), Refresher(RefreshUnavailableError("down")), clock
    )
    with pytest.raises(RefreshUnavailableError):
        subject.usable_token()

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    by_message = {line["message"]: line for line in lines}
    holding_off = by_message[HOLDING_OFF]
    assert holding_off["level"] == "WARNING"
    assert holding_off["service"] == "layer-logging-test"
    assert holding_off["name"] == "usage_engine.recovery"
    assert {key: holding_off[key] for key in ("reason", "failed_refreshes", "error_type", "error")} == {
        "reason": "expired",
        "failed_refreshes": 1,
        "error_type": "RefreshUnavailableError",
        "error": "down",
    }
    assert isinstance(holding_off["retry_after_seconds"], float)
    # INFO steps too, at the Logger's level (INFO unless POWERTOOLS_LOG_LEVEL says otherwise).
    assert by_message[EXPIRED]["level"] == "INFO"
    assert by_message[EXPIRED]["token_fingerprint"] == named_token(OLD_TOKEN).fingerprint
    assert OLD_TOKEN not in stream.getvalue()
    assert not layer_logger.propagate  # not printed a second time by the Lambda runtime's root handler


# Runs in a fresh interpreter: no layer logger exists when structured_layer_logs is called.
EARLY_CALL = r"""
import json, logging, sys
from aws_lambda_powertools import Logger
from usage_engine.observability import structured_layer_logs
for name in [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "usage_engine"]:
    del logging.root.manager.loggerDict[name]
structured_layer_logs(Logger(service="early", level="INFO", stream=sys.stdout))
logging.getLogger("usage_engine.later_module").info("late record", extra={"some_field": 1})
"""


def test_structured_layer_logs_works_before_any_layer_module_has_logged() -> None:
    # With lazy imports a handler may call it before the layer's modules (and their loggers) exist.
    layer_dir = os.path.join(os.path.dirname(__file__), "..", "..", "layers", "usage_engine")
    result = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", EARLY_CALL],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.path.abspath(layer_dir)},
        timeout=60,
    )
    [line] = [json.loads(line) for line in result.stdout.splitlines()]
    assert (line["message"], line["level"], line["name"], line["some_field"]) == (
        "late record",
        "INFO",
        "usage_engine.later_module",
        1,
    )


class Counted:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.drains = 0

    def drain_call_counts(self) -> dict[str, int]:
        self.drains += 1
        counts, self.counts = self.counts, {}
        return counts


def emf_documents(text: str) -> list[dict[str, Any]]:
    return [document for line in text.splitlines() if "_aws" in (document := json.loads(line))]


def test_publish_api_calls_drains_the_client_itself(capsys: pytest.CaptureFixture[str]) -> None:
    client = Counted({"2xx": 3, "4xx": 1})
    publish_api_calls(client, service="unit-service")
    documents = emf_documents(capsys.readouterr().out)
    assert [(d["status"], d["service"], d["ApiCalls"]) for d in documents] == [
        ("2xx", "unit-service", [3.0]),
        ("4xx", "unit-service", [1.0]),
    ]
    assert client.drains == 1

    publish_api_calls(client, service="unit-service")  # drained: nothing more to publish
    assert emf_documents(capsys.readouterr().out) == []


def test_publish_api_calls_still_takes_counts_already_drained(capsys: pytest.CaptureFixture[str]) -> None:
    publish_api_calls({"5xx": 2, "2xx": 0}, service="unit-service")
    documents = emf_documents(capsys.readouterr().out)
    assert [(d["status"], d["ApiCalls"]) for d in documents] == [("5xx", [2.0])]
