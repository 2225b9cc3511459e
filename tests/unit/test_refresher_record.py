"""The refresher's notes in the token secret: optional extra fields that survive the refresher's container,
never make a token unreadable, and are invisible to consumers (older layers ignore them)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from usage_engine import AccessToken, decode_token, encode_token
from usage_engine.states import DecisionReason
from usage_engine.token import MAX_REJECTION_STREAK, NO_RECORD, RefreshRecord

BASE_FIELDS = {"access_token", "token_type", "expires_at", "issued_at", "scope", "audience"}
VERSION = "3f9c1c9e-8a0b-4d5e-9f10-2a3b4c5d6e7f"
RECORD = RefreshRecord(
    minted_for=DecisionReason.REJECTED, rejection_streak=3, credentials_version=VERSION, forced_at=1_800_000_100
)
TOKEN = AccessToken(
    value="eyJhbGciOiJSUzI1NiJ9.payload.signature",
    expires_at=1_800_003_600,
    issued_at=1_800_000_000,
    scope="read:meters",
    audience="https://api.digitalroute.io/",
    record=RECORD,
)


def document(token: AccessToken = TOKEN) -> dict[str, Any]:
    return dict(json.loads(encode_token(token)))


def test_the_notes_are_extra_fields_next_to_the_documented_ones() -> None:
    assert document() == {
        "access_token": TOKEN.value,
        "token_type": "Bearer",
        "expires_at": 1_800_003_600,
        "issued_at": 1_800_000_000,
        "scope": "read:meters",
        "audience": "https://api.digitalroute.io/",
        "minted_for": "rejected",
        "rejection_streak": 3,
        "credentials_version": VERSION,
        "forced_at": 1_800_000_100,
    }


def test_a_token_without_notes_is_written_exactly_as_before() -> None:
    plain = AccessToken(value="abc", expires_at=2, issued_at=1)
    assert set(document(plain)) == BASE_FIELDS
    assert decode_token(encode_token(plain)).record == NO_RECORD


def test_only_notes_that_say_something_are_written() -> None:
    record = RefreshRecord(minted_for=DecisionReason.EXPIRING, credentials_version=VERSION)
    extra = set(document(AccessToken(value="abc", expires_at=2, issued_at=1, record=record))) - BASE_FIELDS
    assert extra == {"minted_for", "credentials_version"}


def test_the_notes_round_trip() -> None:
    decoded = decode_token(encode_token(TOKEN))
    assert decoded.record == RECORD
    assert decoded.record.minted_for is DecisionReason.REJECTED


def test_the_notes_are_not_part_of_the_tokens_identity_or_its_repr() -> None:
    assert dataclasses.replace(TOKEN, record=NO_RECORD) == TOKEN
    assert "rejected" not in repr(TOKEN)
    assert TOKEN.value not in repr(TOKEN.record)


def test_an_older_layers_decoder_sees_only_the_documented_fields() -> None:
    """What a consumer on an older layer does with the new document: it reads the six fields it knows."""
    data = document()
    older_view = {key: data[key] for key in BASE_FIELDS}
    assert decode_token(json.dumps(older_view)) == TOKEN


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"minted_for": "because"}, RefreshRecord(None, 3, VERSION, 1_800_000_100)),
        ({"minted_for": ["rejected"]}, RefreshRecord(None, 3, VERSION, 1_800_000_100)),
        ({"minted_for": None}, RefreshRecord(None, 3, VERSION, 1_800_000_100)),
        ({"rejection_streak": True}, RefreshRecord(DecisionReason.REJECTED, 0, VERSION, 1_800_000_100)),
        ({"rejection_streak": -2}, RefreshRecord(DecisionReason.REJECTED, 0, VERSION, 1_800_000_100)),
        ({"rejection_streak": "3"}, RefreshRecord(DecisionReason.REJECTED, 0, VERSION, 1_800_000_100)),
        (
            {"rejection_streak": 10**40},
            RefreshRecord(DecisionReason.REJECTED, MAX_REJECTION_STREAK, VERSION, 1_800_000_100),
        ),
        ({"credentials_version": "a/b"}, RefreshRecord(DecisionReason.REJECTED, 3, None, 1_800_000_100)),
        ({"credentials_version": "x" * 65}, RefreshRecord(DecisionReason.REJECTED, 3, None, 1_800_000_100)),
        ({"credentials_version": 7}, RefreshRecord(DecisionReason.REJECTED, 3, None, 1_800_000_100)),
        ({"forced_at": 1.5}, RefreshRecord(DecisionReason.REJECTED, 3, VERSION, None)),
        ({"forced_at": 0}, RefreshRecord(DecisionReason.REJECTED, 3, VERSION, None)),
        ({"forced_at": {"at": 1}}, RefreshRecord(DecisionReason.REJECTED, 3, VERSION, None)),
    ],
)
def test_a_malformed_note_reads_as_no_note_and_the_token_stays_readable(
    change: dict[str, Any], expected: RefreshRecord
) -> None:
    decoded = decode_token(json.dumps(document() | change))
    assert decoded == TOKEN
    assert decoded.record == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@given(
    st.fixed_dictionaries(
        {}, optional=dict.fromkeys(("minted_for", "rejection_streak", "credentials_version", "forced_at"), json_values)
    )
)
def test_no_value_of_a_note_makes_the_token_unreadable(notes: dict[str, Any]) -> None:
    decoded = decode_token(json.dumps(document() | notes))
    assert decoded == TOKEN
    record = decoded.record
    assert record.minted_for is None or isinstance(record.minted_for, DecisionReason)
    assert 0 <= record.rejection_streak <= MAX_REJECTION_STREAK
    assert record.forced_at is None or record.forced_at > 0
    # What is carried into the next version is exactly what was read.
    assert decode_token(encode_token(decoded)).record == record
