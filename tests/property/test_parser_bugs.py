"""Properties that fail today, each pinned to a bug with an explicit example (so the failure is certain, not
a matter of luck): marked xfail(strict=True), they turn red when the fix lands and the mark must go.

B1  `$` in a regex matches before a trailing newline: token, OAuth error code and fingerprint checks pass
    values that end in "\\n".
B2  json.loads raises RecursionError for deeply nested input; every parser of outside JSON lets it escape.
B5  decode_token accepts an access_token that no Authorization header can carry.
B6  validate_url lets urllib's ValueError ("Invalid IPv6 URL") escape instead of a ConfigurationError.
B7  a meter value that is a huge JSON integer raises OverflowError in math.isfinite.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import requests
from hypothesis import example, given
from hypothesis import strategies as st

from tests.property.strategies import PROPERTY, TOKEN_ALPHABET, attempt, bearer_tokens
from usage_engine import (
    ConfigurationError,
    CredentialsError,
    RefresherSettings,
    RefreshRequest,
    RefreshRequestError,
    TokenFormatError,
    TokenResponseError,
    UsageEngineApiError,
    api_client,
    decode_token,
    idp,
    metering,
    parse_credentials,
    parse_token_response,
)
from usage_engine.meter_events import MalformedMessageError, parse_meter_event

B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
BASE = {"CREDENTIALS_SECRET_ID": "creds", "TOKEN_SECRET_ID": "token"}
DEEP = "[" * 5000 + "]" * 5000

# Strings that are almost bearer tokens: a valid one with something appended or prepended.
near_tokens = st.builds(
    lambda token, extra, before: extra + token if before else token + extra,
    bearer_tokens,
    st.sampled_from(["\n", "\r\n", " ", "\t", "\r\nX-Injected: 1", "\x00", "é", ""]),
    st.booleans(),
)


def bug(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=reason)


B1 = bug("B1: `$` matches before a trailing newline; use re.fullmatch")
B2 = bug("B2: RecursionError escapes json.loads on deeply nested input")
B5 = bug("B5: decode_token does not check the characters of access_token")
B6 = bug("B6: validate_url lets urlsplit's ValueError escape")
B7 = bug("B7: math.isfinite raises OverflowError for a huge integer")


# --- B1 -------------------------------------------------------------------------------------------------------------


@PROPERTY
@given(near_tokens)
@example("eyJhbGciOiJSUzI1NiJ9.e30.c2ln\n")
def test_every_accepted_idp_token_fits_an_authorization_header(value: str) -> None:
    body = json.dumps({"access_token": value, "token_type": "Bearer", "expires_in": 3600}).encode()
    token, error = attempt(
        lambda: parse_token_response(body, sent_at=1_800_000_000, audience="https://a/"), TokenResponseError
    )
    if error is not None:
        return
    assert B64TOKEN.fullmatch(token.value), f"accepted {token.value!r}"


@PROPERTY
@given(st.text(max_size=20))
@example("access_denied\n")
def test_echoed_oauth_error_codes_are_single_line_codes(code: str) -> None:
    echoed = idp._error_code(json.dumps({"error": code}).encode())
    assert echoed is None or re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", echoed), f"echoed {echoed!r}"


@PROPERTY
@given(st.text("0123456789abcdef\n ", min_size=15, max_size=18))
@example("0123456789abcdef\n")
def test_accepted_fingerprints_are_exactly_16_lowercase_hex(value: str) -> None:
    request, error = attempt(
        lambda: RefreshRequest.from_event({"reason": "rejected", "token_fingerprint": value}), RefreshRequestError
    )
    if error is not None:
        return
    assert request.token_fingerprint is not None
    assert re.fullmatch(r"[0-9a-f]{16}", request.token_fingerprint), f"accepted {value!r}"


# --- B2 -------------------------------------------------------------------------------------------------------------


def _response(body: str, status: int = 200) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body.encode()
    response.request = requests.Request("GET", "https://api.digitalroute.io/api/x").prepare()
    return response


def _expect(error: type[Exception]) -> Callable[[Callable[[], Any]], None]:
    def check(parse: Callable[[], Any]) -> None:
        with pytest.raises(error):
            parse()

    return check


def _returns_quietly(parse: Callable[[], Any]) -> None:
    parse()


DEEP_INPUTS = {
    "idp-success-body": (lambda: parse_token_response(DEEP.encode(), sent_at=1, audience="a"), TokenResponseError),
    "idp-error-body": (lambda: idp._error_code(DEEP.encode()), None),
    "credentials-secret": (lambda: parse_credentials(DEEP), CredentialsError),
    "token-secret": (lambda: decode_token(DEEP), TokenFormatError),
    "meter-event": (lambda: parse_meter_event(DEEP), MalformedMessageError),
    "api-error-body": (lambda: api_client._safe_reason(_response(DEEP, 500)), None),
    "api-json-body": (lambda: api_client._json(_response(DEEP), "/api/x"), UsageEngineApiError),
    "metering-json-body": (lambda: metering._json(_response(DEEP)), UsageEngineApiError),
}


@pytest.mark.parametrize("name", sorted(DEEP_INPUTS))
def test_deeply_nested_json_gives_the_parsers_typed_error(name: str) -> None:
    parse, error = DEEP_INPUTS[name]
    if error is None:
        _returns_quietly(parse)
    else:
        _expect(error)(parse)


# --- B5 -------------------------------------------------------------------------------------------------------------


@PROPERTY
@given(near_tokens)
@example("edited\r\nX-Injected: 1")
def test_every_decoded_token_fits_an_authorization_header(value: str) -> None:
    document = {"access_token": value, "token_type": "Bearer", "expires_at": 2_000_000_000, "issued_at": 1}
    token, error = attempt(lambda: decode_token(json.dumps(document)), TokenFormatError)
    if error is not None:
        # Shorter values occur in any sentence by chance ("a " in "characters a bearer"); see leak_guard.
        if len(value) >= 8:
            assert value not in str(error)
        return
    assert B64TOKEN.fullmatch(token.value), f"accepted {token.value!r}"


# --- B6 -------------------------------------------------------------------------------------------------------------

bracketed = st.builds(
    lambda scheme, host: f"{scheme}{host}/t",
    st.sampled_from(["https://", "http://"]),
    st.sampled_from(["[oops", "[::1", "a]b", "[::1]", "[zz]", "127.0.0.1"]),
)


@PROPERTY
@given(bracketed)
@example("https://[oops/t")
def test_malformed_urls_are_configuration_errors(url: str) -> None:
    _, error = attempt(lambda: RefresherSettings.from_env({**BASE, "USAGE_ENGINE_TOKEN_URL": url}), ConfigurationError)
    assert error is None or getattr(error, "variable", None) == "USAGE_ENGINE_TOKEN_URL"


@PROPERTY
@given(bracketed)
@example("https://[oops/t")
def test_malformed_urls_in_the_credentials_secret_are_credentials_errors(url: str) -> None:
    document = json.dumps({"client_id": "i", "client_secret": "s3cr3t-value", "token_url": url})
    _, error = attempt(lambda: parse_credentials(document), CredentialsError)
    assert error is None or getattr(error, "field", None) == "token_url"


# --- B7 -------------------------------------------------------------------------------------------------------------


@PROPERTY
@given(st.integers())
@example(10**400)
def test_any_integer_meter_value_is_applied_or_dead_lettered(value: int) -> None:
    body = json.dumps({"detail-type": "Update Meter", "detail": {"meterId": "m-1", "value": value}})
    attempt(lambda: parse_meter_event(body), MalformedMessageError)


def test_the_bug_alphabet_matches_the_layer() -> None:
    assert set(TOKEN_ALPHABET) | {"="} == set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")
