from __future__ import annotations

import json

import pytest

from usage_engine import CredentialsError, parse_credentials

SECRET = "s3cr3t-value-never-shown"


def test_snake_case_keys() -> None:
    creds = parse_credentials(json.dumps({"client_id": "id-1", "client_secret": SECRET}))
    assert (creds.client_id, creds.client_secret, creds.audience, creds.token_url) == (
        "id-1",
        SECRET,
        None,
        None,
    )


def test_camel_case_keys_as_offered_by_the_usage_engine_ui() -> None:
    creds = parse_credentials(json.dumps({"clientId": "id-2", "clientSecret": SECRET}))
    assert (creds.client_id, creds.client_secret) == ("id-2", SECRET)


def test_optional_overrides() -> None:
    creds = parse_credentials(
        json.dumps(
            {
                "client_id": "i",
                "client_secret": SECRET,
                "audience": "https://api.us.digitalroute.io/",
                "token_url": "https://api.us.digitalroute.io/authentication/v1/oauth/token",
            }
        )
    )
    assert creds.audience == "https://api.us.digitalroute.io/"
    assert creds.token_url is not None
    assert creds.token_url.startswith("https://api.us.")


def test_repr_hides_the_secret() -> None:
    creds = parse_credentials(json.dumps({"client_id": "i", "client_secret": SECRET}))
    assert SECRET not in repr(creds)
    assert SECRET not in str(creds)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ("not json", "(document)"),
        ("[1, 2]", "(document)"),
        (json.dumps({"client_secret": SECRET}), "client_id"),
        (json.dumps({"client_id": "i"}), "client_secret"),
        (json.dumps({"client_id": "", "client_secret": SECRET}), "client_id"),
        (json.dumps({"client_id": 5, "client_secret": SECRET}), "client_id"),
        (
            json.dumps({"client_id": "i", "client_secret": SECRET, "clientSecret": SECRET + "x"}),
            "client_secret",
        ),
        (
            json.dumps({"client_id": "i", "client_secret": SECRET, "token_url": "http://evil.example/t"}),
            "token_url",
        ),
        (json.dumps({"client_id": "i", "client_secret": SECRET, "audience": 3}), "audience"),
    ],
)
def test_errors_name_the_field_never_the_value(document: str, field: str) -> None:
    with pytest.raises(CredentialsError) as caught:
        parse_credentials(document)
    assert caught.value.field == field
    assert field in str(caught.value)
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None or SECRET not in str(caught.value.__cause__)
