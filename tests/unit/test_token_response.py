"""Strict validation of the IdP's success body: a bad token must never reach the token secret."""

from __future__ import annotations

import json

import pytest

from usage_engine import TokenResponseError, parse_token_response

SENT_AT = 1_800_000_000.7
GOOD = {
    "access_token": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
    "scope": "read:meters",
    "expires_in": 3600,
    "token_type": "Bearer",
}


def parse(document: object) -> object:
    return parse_token_response(json.dumps(document).encode(), sent_at=SENT_AT, audience="https://a/")


def test_expires_at_counts_from_when_the_request_was_sent() -> None:
    token = parse_token_response(json.dumps(GOOD).encode(), sent_at=SENT_AT, audience="https://a/")
    assert token.issued_at == 1_800_000_000
    assert token.expires_at == 1_800_003_600
    assert (token.scope, token.audience, token.token_type) == ("read:meters", "https://a/", "Bearer")


def test_token_type_is_case_insensitive() -> None:
    token = parse_token_response(json.dumps(GOOD | {"token_type": "bearer"}).encode(), sent_at=SENT_AT, audience="a")
    assert token.token_type == "Bearer"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (GOOD | {"access_token": ""}, "access_token"),
        ({k: v for k, v in GOOD.items() if k != "access_token"}, "access_token"),
        (GOOD | {"access_token": "abc def"}, "characters"),
        (GOOD | {"access_token": "abc\r\nX-Injected: 1"}, "characters"),
        (GOOD | {"token_type": "mac"}, "Bearer"),
        ({k: v for k, v in GOOD.items() if k != "token_type"}, "Bearer"),
        ({k: v for k, v in GOOD.items() if k != "expires_in"}, "expires_in"),
        (GOOD | {"expires_in": 0}, "expires_in"),
        (GOOD | {"expires_in": -10}, "expires_in"),
        (GOOD | {"expires_in": "3600"}, "expires_in"),
        (GOOD | {"expires_in": 3600.5}, "expires_in"),
        (GOOD | {"expires_in": True}, "expires_in"),
        (GOOD | {"expires_in": 10**12}, "expires_in"),
        (GOOD | {"scope": ["read:meters"]}, "scope"),
        ([GOOD], "JSON object"),
    ],
)
def test_bad_bodies_are_typed_errors(document: object, message: str) -> None:
    with pytest.raises(TokenResponseError, match=message) as caught:
        parse(document)
    assert GOOD["access_token"] not in str(caught.value)


@pytest.mark.parametrize("body", [b"", b"<html>502 Bad Gateway</html>", b"\xff\xfe", b"{"])
def test_garbage_is_a_typed_error(body: bytes) -> None:
    with pytest.raises(TokenResponseError, match="JSON"):
        parse_token_response(body, sent_at=SENT_AT, audience="a")
