"""The settings at their limits, with the messages that name what is wrong: URLs, required variables, integer
ranges (both ends, and one past them), connection names, and the environment as the default source."""

from __future__ import annotations

import pytest

from usage_engine.errors import ConfigurationError
from usage_engine.settings import (
    DEFAULT_REJECTED_TOKEN_COOLDOWN_SECONDS,
    DEFAULT_TOKEN_EXPIRY_SKEW_SECONDS,
    MAX_REFRESH_MARGIN_SECONDS,
    MAX_TOKEN_EXPIRY_SKEW_SECONDS,
    MIN_REFRESH_MARGIN_SECONDS,
    ConsumerSettings,
    RefresherSettings,
    consumer_variables,
    required_setting,
    validate_url,
)

REFRESHER = {"CREDENTIALS_SECRET_ID": "c", "TOKEN_SECRET_ID": "t"}
# The documented range of REJECTED_TOKEN_COOLDOWN_SECONDS (docs/contracts.md): 0-900.
COOLDOWN_MAX = 900


def problem(call: object) -> str:
    with pytest.raises(ConfigurationError) as caught:
        call()  # type: ignore[operator]
    return str(caught.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://[::1", "is not a valid URL"),
        ("api.example.com/x", "is not an absolute URL with a host"),
        ("http://api.example.com", "must use https:// (http:// is accepted only for loopback hosts)"),
        ("ftp://api.example.com", "must use https:// (http:// is accepted only for loopback hosts)"),
    ],
)
def test_a_url_problem_is_named(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        validate_url(url, variable="X_URL")
    assert caught.value.variable == "X_URL"
    assert str(caught.value) == f"environment variable X_URL: {message}"


@pytest.mark.parametrize(
    "url", ["https://api.example.com", "http://localhost:8080", "http://127.0.0.1:1/x", "http://[::1]:9"]
)
def test_https_anywhere_and_http_on_loopback(url: str) -> None:
    assert validate_url(url, variable="X") == url


def test_a_required_setting_is_read_from_the_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", " https://sqs.example/q ")
    assert required_setting("DEAD_LETTER_QUEUE_URL") == "https://sqs.example/q"
    assert required_setting("X", {"X": "v"}) == "v"
    monkeypatch.delenv("DEAD_LETTER_QUEUE_URL")
    with pytest.raises(ConfigurationError) as caught:
        required_setting("DEAD_LETTER_QUEUE_URL")
    assert str(caught.value).endswith("environment variable DEAD_LETTER_QUEUE_URL: is required but not set")


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("REFRESH_MARGIN_SECONDS", MIN_REFRESH_MARGIN_SECONDS, MAX_REFRESH_MARGIN_SECONDS),
        ("REJECTED_TOKEN_COOLDOWN_SECONDS", 0, COOLDOWN_MAX),
    ],
)
def test_the_refreshers_ranges_are_inclusive(name: str, low: int, high: int) -> None:
    field = {
        "REFRESH_MARGIN_SECONDS": "refresh_margin_seconds",
        "REJECTED_TOKEN_COOLDOWN_SECONDS": "rejected_cooldown_seconds",
    }[name]
    for value in (low, high):
        assert getattr(RefresherSettings.from_env({**REFRESHER, name: str(value)}), field) == value
    for value in (low - 1, high + 1):
        message = problem(lambda value=value: RefresherSettings.from_env({**REFRESHER, name: str(value)}))
        assert message.endswith(f"environment variable {name}: must be between {low} and {high}, got {value}")
    assert problem(lambda: RefresherSettings.from_env({**REFRESHER, name: "soon"})).endswith(
        f"environment variable {name}: must be an integer, got 'soon'"
    )


def test_the_refresher_defaults_and_the_environment_as_source(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in REFRESHER.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("REJECTED_TOKEN_COOLDOWN_SECONDS", raising=False)
    settings = RefresherSettings.from_env()
    assert (settings.credentials_secret_id, settings.token_secret_id) == ("c", "t")
    assert settings.rejected_cooldown_seconds == DEFAULT_REJECTED_TOKEN_COOLDOWN_SECONDS


def test_the_consumers_skew_range_says_why() -> None:
    env = {"TOKEN_SECRET_ID": "t"}
    assert ConsumerSettings.from_env({**env, "TOKEN_EXPIRY_SKEW_SECONDS": "0"}).token_expiry_skew_seconds == 0
    top = str(MAX_TOKEN_EXPIRY_SKEW_SECONDS)
    assert ConsumerSettings.from_env({**env, "TOKEN_EXPIRY_SKEW_SECONDS": top}).token_expiry_skew_seconds == int(top)
    assert ConsumerSettings.from_env(env).token_expiry_skew_seconds == DEFAULT_TOKEN_EXPIRY_SKEW_SECONDS
    message = problem(lambda: ConsumerSettings.from_env({**env, "TOKEN_EXPIRY_SKEW_SECONDS": str(int(top) + 1)}))
    assert message.endswith(
        f"environment variable TOKEN_EXPIRY_SKEW_SECONDS: must be between 0 and {top} (at most the refresher's smallest "
        f"REFRESH_MARGIN_SECONDS, so that a token consumers treat as expired is always one the refresher "
        f"replaces), got {int(top) + 1}"
    )


def test_an_api_url_loses_only_its_trailing_slashes() -> None:
    env = {"TOKEN_SECRET_ID": "t", "USAGE_ENGINE_API_URL": "https://api.example.com/base//"}
    assert ConsumerSettings.from_env(env).api_url == "https://api.example.com/base"


@pytest.mark.parametrize("name", ["", "a" * 33, "us-east", "ü"])
def test_a_connection_name_outside_the_rule_is_refused_and_quoted_short(name: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        consumer_variables(name)
    assert caught.value.variable == "USAGE_ENGINE_<NAME>_*"
    assert str(caught.value).endswith(f"connection name {name[:40]!r} is not 1-32 letters, digits or underscores")


def test_a_long_connection_name_is_quoted_to_forty_characters() -> None:
    name = "x" * 41 + "-"
    with pytest.raises(ConfigurationError) as caught:
        consumer_variables(name)
    assert f"{'x' * 40!r}" in str(caught.value)
    assert consumer_variables("a" * 32).token_secret_id == f"USAGE_ENGINE_{'A' * 32}_TOKEN_SECRET_ID"
