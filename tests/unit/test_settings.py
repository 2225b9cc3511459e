from __future__ import annotations

import pytest

from usage_engine import ConfigurationError, ConsumerSettings, RefresherSettings
from usage_engine.settings import DEFAULT_AUDIENCE, DEFAULT_TOKEN_URL

BASE = {"CREDENTIALS_SECRET_ID": "creds", "TOKEN_SECRET_ID": "token"}


def test_refresher_defaults_are_the_eu_endpoints() -> None:
    settings = RefresherSettings.from_env(BASE)
    assert settings.token_url == DEFAULT_TOKEN_URL == "https://api.digitalroute.io/authentication/v1/oauth/token"
    assert settings.audience == DEFAULT_AUDIENCE == "https://api.digitalroute.io/"
    assert settings.refresh_margin_seconds == 1200


@pytest.mark.parametrize("missing", ["CREDENTIALS_SECRET_ID", "TOKEN_SECRET_ID"])
def test_missing_variable_is_named(missing: str) -> None:
    env = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(ConfigurationError, match=missing) as caught:
        RefresherSettings.from_env(env)
    assert caught.value.variable == missing


@pytest.mark.parametrize(
    "url",
    [
        "http://api.digitalroute.io/authentication/v1/oauth/token",
        "ftp://127.0.0.1/token",
        "not a url",
        "http://10.0.0.5/token",
        "http://127.0.0.1.example.com/token",
    ],
)
def test_token_url_must_be_https_unless_loopback(url: str) -> None:
    with pytest.raises(ConfigurationError, match="USAGE_ENGINE_TOKEN_URL"):
        RefresherSettings.from_env({**BASE, "USAGE_ENGINE_TOKEN_URL": url})


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/t", "http://localhost/t", "http://[::1]:9/t"])
def test_plain_http_is_accepted_on_loopback(url: str) -> None:
    assert RefresherSettings.from_env({**BASE, "USAGE_ENGINE_TOKEN_URL": url}).token_url == url


@pytest.mark.parametrize("value", ["abc", "12.5", "0", "100000", "-5"])
def test_margin_must_be_a_sane_integer(value: str) -> None:
    with pytest.raises(ConfigurationError, match="REFRESH_MARGIN_SECONDS"):
        RefresherSettings.from_env({**BASE, "REFRESH_MARGIN_SECONDS": value})


def test_consumer_settings() -> None:
    settings = ConsumerSettings.from_env(
        {
            "TOKEN_SECRET_ID": "token",
            "USAGE_ENGINE_API_URL": "https://api.us.digitalroute.io/",
            "TOKEN_REFRESHER_FUNCTION": "refresher",
            "TOKEN_EXPIRY_SKEW_SECONDS": "30",
        }
    )
    assert settings.api_url == "https://api.us.digitalroute.io"
    assert settings.refresher_function == "refresher"
    assert settings.token_expiry_skew_seconds == 30
    assert ConsumerSettings.from_env({"TOKEN_SECRET_ID": "t"}).refresher_function is None
    with pytest.raises(ConfigurationError, match="TOKEN_SECRET_ID"):
        ConsumerSettings.from_env({})


def test_skew_is_never_above_the_smallest_refresh_margin() -> None:
    from usage_engine.settings import MAX_TOKEN_EXPIRY_SKEW_SECONDS, MIN_REFRESH_MARGIN_SECONDS

    assert MAX_TOKEN_EXPIRY_SKEW_SECONDS <= MIN_REFRESH_MARGIN_SECONDS
    base = {"TOKEN_SECRET_ID": "token"}
    accepted = ConsumerSettings.from_env({**base, "TOKEN_EXPIRY_SKEW_SECONDS": str(MAX_TOKEN_EXPIRY_SKEW_SECONDS)})
    assert accepted.token_expiry_skew_seconds == MAX_TOKEN_EXPIRY_SKEW_SECONDS
    with pytest.raises(ConfigurationError, match="smallest REFRESH_MARGIN_SECONDS") as refused:
        ConsumerSettings.from_env({**base, "TOKEN_EXPIRY_SKEW_SECONDS": str(MAX_TOKEN_EXPIRY_SKEW_SECONDS + 1)})
    assert refused.value.variable == "TOKEN_EXPIRY_SKEW_SECONDS"
