"""The token secret's codec at its edges: the smallest accepted epoch, optional fields absent, exact limits of
the refresher's notes, and the exact bytes written (each case here fails for a one-character change of the
code; tools/mutation.py checks that they do)."""

from __future__ import annotations

import json

import pytest

from usage_engine import AccessToken, TokenFormatError, decode_token, encode_token
from usage_engine.states import DecisionReason
from usage_engine.token import FINGERPRINT_LENGTH, MAX_REJECTION_STREAK, NO_RECORD, RefreshRecord, fingerprint

BASE = {
    "access_token": "abc.def-ghi_jkl~mno+pqr/stu==",
    "token_type": "Bearer",
    "expires_at": 1_800_003_600,
    "issued_at": 1_800_000_000,
}


def decode(**changes: object) -> AccessToken:
    return decode_token(json.dumps({**BASE, **changes}))


def problem(**changes: object) -> TokenFormatError:
    with pytest.raises(TokenFormatError) as caught:
        decode(**changes)
    return caught.value


def test_a_token_stored_without_scope_or_audience_decodes_with_empty_ones() -> None:
    token = decode_token(json.dumps(BASE))
    assert (token.scope, token.audience) == ("", "")
    assert (token.value, token.token_type, token.expires_at, token.issued_at) == (
        BASE["access_token"],
        "Bearer",
        1_800_003_600,
        1_800_000_000,
    )
    assert token.record == NO_RECORD


def test_null_scope_and_audience_read_as_absent_but_present_ones_are_kept_verbatim() -> None:
    assert (decode(scope=None, audience=None).scope, decode(scope=None, audience=None).audience) == ("", "")
    # Blank optional fields are not an error (only required ones must not be blank).
    assert decode(scope=" ", audience="").scope == " "


@pytest.mark.parametrize("key", ["expires_at", "issued_at"])
@pytest.mark.parametrize("value", [0, -1])
def test_epoch_zero_and_below_are_refused(key: str, value: int) -> None:
    error = problem(**{key: value})
    assert error.field == key
    assert str(error) == f"token secret: {key}: must be positive"


@pytest.mark.parametrize("key", ["expires_at", "issued_at"])
def test_epoch_one_is_the_smallest_accepted(key: str) -> None:
    assert getattr(decode(**{key: 1}), key) == 1


@pytest.mark.parametrize(("key", "value"), [("expires_at", None), ("issued_at", "1"), ("expires_at", False)])
def test_an_epoch_that_is_not_an_integer_names_itself(key: str, value: object) -> None:
    error = problem(**{key: value})
    assert (error.field, str(error)) == (key, f"token secret: {key}: must be an integer number of epoch seconds")


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"access_token": ""}, "access_token", "must not be empty"),
        ({"access_token": "   "}, "access_token", "must not be empty"),
        ({"access_token": None}, "access_token", "must be a string"),
        ({"access_token": "a b"}, "access_token", "has characters a bearer token cannot have"),
        ({"token_type": None}, "token_type", "must be a string"),
        ({"token_type": " "}, "token_type", "must not be empty"),
        ({"token_type": "mac"}, "token_type", "must be Bearer"),
        ({"scope": 7}, "scope", "must be a string"),
        ({"audience": ["a"]}, "audience", "must be a string"),
    ],
)
def test_each_field_problem_names_its_field_and_says_what_is_wrong(
    changes: dict[str, object], field: str, message: str
) -> None:
    error = problem(**changes)
    assert (error.field, str(error)) == (field, f"token secret: {field}: {message}")


@pytest.mark.parametrize(
    ("raw", "message"), [("{", "is not valid JSON"), ("[]", "is not a JSON object"), ("7", "is not a JSON object")]
)
def test_a_document_problem_says_which(raw: str, message: str) -> None:
    with pytest.raises(TokenFormatError) as caught:
        decode_token(raw)
    assert (caught.value.field, str(caught.value)) == ("(document)", f"token secret: (document): {message}")


@pytest.mark.parametrize("token_type", ["bearer", "BEARER", "Bearer"])
def test_any_spelling_of_bearer_is_stored_as_bearer(token_type: str) -> None:
    assert decode(token_type=token_type).token_type == "Bearer"


def test_the_secret_is_written_compact_with_the_notes_after_the_token_fields() -> None:
    token = AccessToken(
        value="v",
        expires_at=2,
        issued_at=1,
        scope="s",
        audience="a",
        record=RefreshRecord(DecisionReason.REJECTED, rejection_streak=2),
    )
    assert encode_token(token) == (
        '{"access_token":"v","token_type":"Bearer","expires_at":2,"issued_at":1,"scope":"s","audience":"a",'
        '"minted_for":"rejected","rejection_streak":2}'
    )


def test_the_fingerprint_is_the_first_sixteen_hex_digits() -> None:
    # sha256("abc"), a published test vector: the fingerprint does not depend on this code's own hashing.
    assert fingerprint("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"[:FINGERPRINT_LENGTH]
    assert FINGERPRINT_LENGTH == 16


def test_a_token_is_usable_until_its_expiry_without_skew() -> None:
    token = AccessToken(value="v", expires_at=1000, issued_at=1)
    assert token.is_usable(999.5)
    assert not token.is_usable(1000)
    assert token.is_usable(899.5, skew_seconds=100)
    assert not token.is_usable(900, skew_seconds=100)


# --- the refresher's notes ----------------------------------------------------------------------------------


def test_no_notes_write_no_fields() -> None:
    assert NO_RECORD.fields() == {}
    assert RefreshRecord(rejection_streak=0).fields() == {}


def test_every_note_is_written_under_its_name() -> None:
    record = RefreshRecord(DecisionReason.FORCED, rejection_streak=1, credentials_version="v-1", forced_at=1)
    assert record.fields() == {
        "minted_for": "forced",
        "rejection_streak": 1,
        "credentials_version": "v-1",
        "forced_at": 1,
    }
    assert RefreshRecord.from_fields(record.fields()) == record


@pytest.mark.parametrize(
    ("streak", "read"),
    [
        (1, 1),
        (MAX_REJECTION_STREAK - 1, MAX_REJECTION_STREAK - 1),
        (MAX_REJECTION_STREAK, MAX_REJECTION_STREAK),
        (MAX_REJECTION_STREAK + 1, MAX_REJECTION_STREAK),
        (0, 0),
        (-1, 0),
        (True, 0),
        (2.0, 0),
        ("2", 0),
    ],
)
def test_a_rejection_streak_is_read_up_to_its_cap(streak: object, read: int) -> None:
    assert RefreshRecord.from_fields({"rejection_streak": streak}).rejection_streak == read


@pytest.mark.parametrize(("forced_at", "read"), [(1, 1), (0, None), (-5, None), (True, None), (1.5, None)])
def test_forced_at_is_a_positive_integer_or_nothing(forced_at: object, read: int | None) -> None:
    assert RefreshRecord.from_fields({"forced_at": forced_at}).forced_at == read


@pytest.mark.parametrize(
    ("version", "read"),
    [
        ("a" * 64, "a" * 64),
        ("a" * 65, None),
        ("", None),
        ("3f2a9c1e-0b4d-4e8f-9a7b-1c2d3e4f5a6b", "3f2a9c1e-0b4d-4e8f-9a7b-1c2d3e4f5a6b"),
        ("a b", None),
        (7, None),
    ],
)
def test_a_credentials_version_is_carried_only_when_it_looks_like_one(version: object, read: str | None) -> None:
    assert RefreshRecord.from_fields({"credentials_version": version}).credentials_version == read


@pytest.mark.parametrize(
    ("reason", "read"), [("rejected", DecisionReason.REJECTED), ("no-such-reason", None), (3, None), (None, None)]
)
def test_minted_for_is_a_known_reason_or_nothing(reason: object, read: DecisionReason | None) -> None:
    assert RefreshRecord.from_fields({"minted_for": reason}).minted_for == read


def test_notes_are_read_back_from_the_secret_and_never_make_it_unreadable() -> None:
    token = decode(minted_for="rejected", rejection_streak=3, credentials_version="v", forced_at=5)
    assert token.record == RefreshRecord(DecisionReason.REJECTED, 3, "v", 5)
    assert decode(minted_for=[], rejection_streak={}, forced_at="x").record == NO_RECORD
