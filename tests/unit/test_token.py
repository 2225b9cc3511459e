from __future__ import annotations

import hashlib
import json

import pytest

from usage_engine import AccessToken, TokenFormatError, decode_token, encode_token, fingerprint

TOKEN = AccessToken(
    value="eyJhbGciOiJSUzI1NiJ9.payload.signature",
    expires_at=1_800_003_600,
    issued_at=1_800_000_000,
    scope="read:meters create:meters",
    audience="https://api.digitalroute.io/",
)


def test_secret_format_is_exactly_the_design_contract() -> None:
    document = json.loads(encode_token(TOKEN))
    assert document == {
        "access_token": TOKEN.value,
        "token_type": "Bearer",
        "expires_at": 1_800_003_600,
        "issued_at": 1_800_000_000,
        "scope": "read:meters create:meters",
        "audience": "https://api.digitalroute.io/",
    }


def test_round_trip() -> None:
    assert decode_token(encode_token(TOKEN)) == TOKEN


def test_fingerprint_is_a_sha256_prefix() -> None:
    assert fingerprint(TOKEN.value) == hashlib.sha256(TOKEN.value.encode()).hexdigest()[:16]
    assert TOKEN.fingerprint == fingerprint(TOKEN.value)
    assert TOKEN.authorization == f"Bearer {TOKEN.value}"


def test_repr_never_shows_the_token() -> None:
    assert TOKEN.value not in repr(TOKEN)
    assert TOKEN.value not in f"{TOKEN}"
    assert TOKEN.fingerprint in repr(TOKEN)


def test_expiry_math() -> None:
    assert TOKEN.seconds_remaining(1_800_003_000) == 600
    assert TOKEN.is_usable(1_800_003_539, skew_seconds=60)
    assert not TOKEN.is_usable(1_800_003_540, skew_seconds=60)
    assert not TOKEN.is_usable(1_800_003_600)


def test_hand_edited_secret_with_extra_fields_is_accepted() -> None:
    document = json.loads(encode_token(TOKEN)) | {"note": "edited by hand", "token_type": "bearer"}
    assert decode_token(json.dumps(document)) == TOKEN


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"access_token": ""}, "access_token"),
        ({"access_token": None}, "access_token"),
        ({"token_type": "mac"}, "token_type"),
        ({"expires_at": "1800003600"}, "expires_at"),
        ({"expires_at": True}, "expires_at"),
        ({"expires_at": 1.5}, "expires_at"),
        ({"issued_at": -1}, "issued_at"),
        ({"scope": 7}, "scope"),
    ],
)
def test_wrong_types_are_typed_errors(change: dict[str, object], field: str) -> None:
    document = json.loads(encode_token(TOKEN)) | change
    with pytest.raises(TokenFormatError) as caught:
        decode_token(json.dumps(document))
    assert caught.value.field == field
    assert TOKEN.value not in str(caught.value)


@pytest.mark.parametrize("raw", ["", "{", "[]", "null", '"text"'])
def test_not_a_json_object(raw: str) -> None:
    with pytest.raises(TokenFormatError):
        decode_token(raw)
