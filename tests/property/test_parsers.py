"""Every parser of outside input: only its typed error escapes, valid values round-trip, errors never echo a
secret. Outside input: the IdP's answers, both secrets, the refresher's event, the environment, and the
meter events arriving through SQS."""

from __future__ import annotations

import ipaddress
import json
import string
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.property.strategies import (
    MISSING,
    PROPERTY,
    TOKEN_ALPHABET,
    attempt,
    bearer_tokens,
    document,
    dumps,
    field,
    json_values,
    non_blank_text,
    outside_text,
)
from usage_engine import (
    AccessToken,
    ConfigurationError,
    ConsumerSettings,
    CredentialsError,
    RefresherSettings,
    RefreshRequest,
    RefreshRequestError,
    TokenFormatError,
    TokenResponseError,
    decode_token,
    encode_token,
    parse_credentials,
    parse_token_response,
)
from usage_engine.meter_events import CreateMeter, DeleteMeter, MalformedMessageError, UpdateMeter, parse_meter_event
from usage_engine.refresher import REASONS
from usage_engine.settings import MAX_TOKEN_EXPIRY_SKEW_SECONDS

SENT_AT = 1_800_000_000.25
AUDIENCE = "https://api.digitalroute.io/"

# --- parse_token_response: the IdP's success body ------------------------------------------------------------------

token_responses = document(
    {
        "access_token": field(bearer_tokens),
        "token_type": field(st.sampled_from(["Bearer", "bearer", "BEARER"])),
        "expires_in": field(st.integers(min_value=1, max_value=86400)),
        "scope": field(st.text(max_size=40)),
    }
)
idp_bodies = st.one_of(st.binary(max_size=200), outside_text(token_responses).map(str.encode))


@PROPERTY
@given(idp_bodies)
def test_token_response_raises_only_its_typed_error(body: bytes) -> None:
    token, error = attempt(lambda: parse_token_response(body, sent_at=SENT_AT, audience=AUDIENCE), TokenResponseError)
    if error is not None:
        data = _loads(body)
        value = data.get("access_token") if isinstance(data, dict) else None
        if isinstance(value, str) and len(value) >= 8:
            assert value not in str(error)
        return
    assert token.token_type == "Bearer"
    assert token.issued_at == int(SENT_AT)
    assert 1 <= token.expires_at - token.issued_at <= 86400
    assert token.audience == AUDIENCE
    assert repr(token) == f"AccessToken(fingerprint={token.fingerprint}, expires_at={token.expires_at})"


@PROPERTY
@given(
    bearer_tokens,
    st.sampled_from(["Bearer", "bearer", "BEARER"]),
    st.integers(min_value=1, max_value=86400),
    st.text(max_size=40),
    st.floats(min_value=1_000_000_000, max_value=4_000_000_000),
)
def test_valid_token_responses_round_trip(
    value: str, token_type: str, expires_in: int, scope: str, sent_at: float
) -> None:
    body = json.dumps({"access_token": value, "token_type": token_type, "expires_in": expires_in, "scope": scope})
    token = parse_token_response(body.encode(), sent_at=sent_at, audience=AUDIENCE)
    assert (token.value, token.token_type, token.scope, token.audience) == (value, "Bearer", scope, AUDIENCE)
    assert token.issued_at == int(sent_at)
    assert token.expires_at == int(sent_at) + expires_in


# --- parse_credentials: the credentials secret ----------------------------------------------------------------------

SECRET = "s3cr3t-value-from-hypothesis"
https_urls = st.sampled_from(
    [
        "https://api.digitalroute.io/",
        "https://api.us.digitalroute.io/authentication/v1/oauth/token",
        "http://127.0.0.1:8080/t",
    ]
)
credentials_documents = document(
    {
        "client_id": field(non_blank_text),
        "client_secret": field(st.just(SECRET)),
        "clientId": st.one_of(st.just(MISSING), non_blank_text, json_values),
        "clientSecret": st.one_of(st.just(MISSING), st.just(SECRET), json_values),
        "audience": st.one_of(st.just(MISSING), https_urls, json_values, st.just("http://evil.example/")),
        "token_url": st.one_of(st.just(MISSING), https_urls, json_values),
    }
)


@PROPERTY
@given(outside_text(credentials_documents))
def test_credentials_raise_only_their_typed_error_and_never_echo_the_secret(secret_string: str) -> None:
    credentials, error = attempt(lambda: parse_credentials(secret_string), CredentialsError)
    if error is not None:
        assert SECRET not in str(error)
        assert getattr(error, "field", "?") in str(error)
        return
    assert credentials.client_id.strip() == credentials.client_id != ""
    assert credentials.client_secret.strip() == credentials.client_secret != ""
    assert credentials.client_secret not in repr(credentials)


@PROPERTY
@given(
    non_blank_text, non_blank_text, st.booleans(), st.one_of(st.none(), https_urls), st.one_of(st.none(), https_urls)
)
def test_valid_credentials_round_trip_in_either_spelling(
    client_id: str, client_secret: str, camel: bool, audience: str | None, token_url: str | None
) -> None:
    keys = ("clientId", "clientSecret") if camel else ("client_id", "client_secret")
    document_: dict[str, Any] = {keys[0]: client_id, keys[1]: client_secret}
    if audience is not None:
        document_["audience"] = audience
    if token_url is not None:
        document_["token_url"] = token_url
    credentials = parse_credentials(json.dumps(document_))
    assert (credentials.client_id, credentials.client_secret) == (client_id.strip(), client_secret.strip())
    assert (credentials.audience, credentials.token_url) == (audience, token_url)


# --- decode_token: the token secret ---------------------------------------------------------------------------------

STORED_TOKEN = "eyJhbGciOiJSUzI1NiJ9.stored-token-value.c2ln"
epochs = st.integers(min_value=1, max_value=2**40)
token_documents = document(
    {
        "access_token": field(st.just(STORED_TOKEN)),
        "token_type": field(st.sampled_from(["Bearer", "bearer"])),
        "expires_at": field(epochs),
        "issued_at": field(epochs),
        "scope": field(st.text(max_size=20)),
        "audience": field(st.just(AUDIENCE)),
    }
)


@PROPERTY
@given(outside_text(token_documents))
def test_token_secret_raises_only_its_typed_error_and_never_echoes_the_token(secret_string: str) -> None:
    token, error = attempt(lambda: decode_token(secret_string), TokenFormatError)
    if error is not None:
        assert STORED_TOKEN not in str(error)
        return
    assert token.token_type == "Bearer"
    assert token.expires_at > 0
    assert token.issued_at > 0
    assert token.value.strip() != ""


@PROPERTY
@given(bearer_tokens, epochs, epochs, st.text(max_size=40), st.text(max_size=40))
def test_encoded_tokens_decode_to_themselves(
    value: str, expires_at: int, issued_at: int, scope: str, audience: str
) -> None:
    token = AccessToken(value=value, expires_at=expires_at, issued_at=issued_at, scope=scope, audience=audience)
    assert decode_token(encode_token(token)) == token


# --- RefreshRequest.from_event: the refresher's invocation event ------------------------------------------------------

fingerprints = st.text("0123456789abcdef", min_size=16, max_size=16)
refresh_events = document(
    {
        "reason": st.one_of(st.sampled_from([*REASONS, "because", "REJECTED"]), json_values, st.just(MISSING)),
        "token_fingerprint": st.one_of(fingerprints, st.text(max_size=20), json_values, st.just(MISSING)),
    }
)


@PROPERTY
@given(st.one_of(json_values, refresh_events))
def test_refresh_events_raise_only_their_typed_error(event: Any) -> None:
    request, error = attempt(lambda: RefreshRequest.from_event(event), RefreshRequestError)
    if error is not None:
        return
    assert request.reason in REASONS
    assert (request.token_fingerprint is not None) == (request.reason == "rejected")


@PROPERTY
@given(st.sampled_from(REASONS), fingerprints)
def test_valid_refresh_events_round_trip(reason: str, token_fingerprint: str) -> None:
    event = {"reason": reason, "token_fingerprint": token_fingerprint}
    request = RefreshRequest.from_event(json.loads(json.dumps(event)))
    assert request.reason == reason
    assert request.token_fingerprint == (token_fingerprint if reason == "rejected" else None)


def test_no_reason_is_a_scheduled_run() -> None:
    for event in (None, {}, {"source": "aws.scheduler", "detail": {}}):
        assert RefreshRequest.from_event(event) == RefreshRequest("scheduled")


# --- settings: the environment ----------------------------------------------------------------------------------------

url_hosts = st.one_of(
    st.sampled_from(["127.0.0.1", "localhost", "[::1]", "api.digitalroute.io", "10.0.0.5", ""]),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789.-", min_size=1, max_size=20),
)
urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}{host}{port}{path}",
    st.sampled_from(["https://", "http://", "ftp://", "", "HTTPS://"]),
    url_hosts,
    st.sampled_from(["", ":8080", ":0"]),
    st.sampled_from(["", "/", "/authentication/v1/oauth/token", "/a b"]),
)
setting_values = st.one_of(st.text(max_size=20), urls, st.integers(-10, 5000).map(str), st.just(""), st.just("  "))
SETTINGS = (
    "CREDENTIALS_SECRET_ID",
    "TOKEN_SECRET_ID",
    "USAGE_ENGINE_TOKEN_URL",
    "USAGE_ENGINE_AUDIENCE",
    "USAGE_ENGINE_API_URL",
    "TOKEN_REFRESHER_FUNCTION",
    "REFRESH_MARGIN_SECONDS",
    "TOKEN_EXPIRY_SKEW_SECONDS",
    "REJECTED_TOKEN_COOLDOWN_SECONDS",
)
environments = st.dictionaries(st.sampled_from(SETTINGS), setting_values)


class _Loopback:
    def __contains__(self, host: object) -> bool:
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(str(host)).is_loopback
        except ValueError:
            return False


LOOPBACK = _Loopback()


@PROPERTY
@given(environments)
def test_settings_raise_only_configuration_errors_that_name_the_variable(env: dict[str, str]) -> None:
    for settings_class in (RefresherSettings, ConsumerSettings):
        settings, error = attempt(lambda: settings_class.from_env(env), ConfigurationError)  # noqa: B023
        if error is not None:
            variable = getattr(error, "variable", None)
            assert variable in SETTINGS
            assert str(error).startswith(f"environment variable {variable}:")
            continue
        for url in [
            getattr(settings, name) for name in ("token_url", "audience", "api_url") if hasattr(settings, name)
        ]:
            parts = urlsplit(url)
            assert parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK), url


@PROPERTY
@given(
    non_blank_text.map(str.strip),
    non_blank_text.map(str.strip),
    st.sampled_from(["https://api.us.digitalroute.io", "http://127.0.0.1:4010", "https://api.digitalroute.io/"]),
    st.integers(min_value=300, max_value=3300),
    st.integers(min_value=0, max_value=MAX_TOKEN_EXPIRY_SKEW_SECONDS),
)
def test_valid_settings_round_trip(credentials_id: str, token_id: str, url: str, margin: int, skew: int) -> None:
    env = {
        "CREDENTIALS_SECRET_ID": credentials_id,
        "TOKEN_SECRET_ID": token_id,
        "USAGE_ENGINE_TOKEN_URL": url + "/authentication/v1/oauth/token",
        "USAGE_ENGINE_AUDIENCE": url,
        "USAGE_ENGINE_API_URL": url,
        "REFRESH_MARGIN_SECONDS": str(margin),
        "TOKEN_EXPIRY_SKEW_SECONDS": str(skew),
    }
    refresher = RefresherSettings.from_env(env)
    assert (refresher.credentials_secret_id, refresher.token_secret_id) == (credentials_id, token_id)
    assert (refresher.token_url, refresher.audience) == (env["USAGE_ENGINE_TOKEN_URL"], url)
    assert refresher.refresh_margin_seconds == margin
    consumer = ConsumerSettings.from_env(env)
    assert (consumer.token_secret_id, consumer.api_url) == (token_id, url.rstrip("/"))
    assert consumer.token_expiry_skew_seconds == skew


# --- parse_meter_event: SQS bodies of EventBridge events ----------------------------------------------------------------

texts = st.text(min_size=1, max_size=30).filter(lambda s: s.strip() != "")
numbers = st.one_of(st.integers(min_value=-(2**63), max_value=2**63), st.floats(allow_nan=False, allow_infinity=False))
details = document(
    {
        "domain": field(texts),
        "externalRef": field(texts),
        "meterTypeId": field(texts),
        "userId": field(texts),
        "meterId": field(texts),
        "value": field(st.one_of(numbers, st.floats())),
        "resetAt": field(st.one_of(texts, st.none())),
    }
)
events = document(
    {
        "detail-type": field(st.sampled_from(["Create Meter", "Update Meter", "Delete Meter", "Rename Meter"])),
        "detail": field(details),
        "source": field(st.just("billing.crm")),
    }
)


@PROPERTY
@given(outside_text(events))
def test_meter_events_raise_only_their_typed_error(body: str) -> None:
    command, error = attempt(lambda: parse_meter_event(body), MalformedMessageError)
    if error is not None:
        return
    assert isinstance(command, CreateMeter | UpdateMeter | DeleteMeter)


# What the identifier fields accept (usage_engine.identifiers has the exact alphabets; test_identifiers.py
# explores the rest of the text space).
identifiers = st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1, max_size=30).filter(
    lambda text: text not in (".", "..")
)


@PROPERTY
@given(identifiers, identifiers, identifiers, identifiers)
def test_valid_create_events_round_trip(domain: str, external_ref: str, meter_type_id: str, user_id: str) -> None:
    detail = {"domain": domain, "externalRef": external_ref, "meterTypeId": meter_type_id, "userId": user_id}
    command = parse_meter_event(json.dumps({"detail-type": "Create Meter", "detail": detail}))
    assert command == CreateMeter(domain, external_ref, meter_type_id, user_id)


@PROPERTY
@given(identifiers, st.one_of(st.just(MISSING), numbers), st.one_of(st.just(MISSING), texts, st.none()))
def test_valid_update_events_round_trip(meter_id: str, value: Any, reset_at: Any) -> None:
    detail: dict[str, Any] = {"meterId": meter_id}
    if value is not MISSING:
        detail["value"] = value
    if reset_at is not MISSING:
        detail["resetAt"] = reset_at
    body = dumps({"detail-type": "Update Meter", "detail": detail})
    if value is MISSING and reset_at is MISSING:
        with pytest.raises(MalformedMessageError, match="value and/or"):
            parse_meter_event(body)
        return
    command = parse_meter_event(body)
    assert isinstance(command, UpdateMeter)
    assert command.ref.meter_id == meter_id
    expected = {k: v for k, v in (("value", value), ("reset_at", reset_at)) if v is not MISSING}
    assert command.changes == expected


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def test_the_token_alphabet_is_rfc6750() -> None:
    assert set(TOKEN_ALPHABET) == set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/")
