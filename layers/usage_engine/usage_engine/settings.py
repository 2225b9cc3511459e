"""Settings read from the environment at handler entry (never at import time)."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import ConfigurationError

DEFAULT_TOKEN_URL = "https://api.digitalroute.io/authentication/v1/oauth/token"
DEFAULT_AUDIENCE = "https://api.digitalroute.io/"
DEFAULT_API_URL = "https://api.digitalroute.io"
# With the 5-minute schedule in template.yaml, 20 minutes leaves three retries before a token expires
# while a one-hour token is still used for 40-45 minutes (see README, "Refresh schedule").
DEFAULT_REFRESH_MARGIN_SECONDS = 1200
DEFAULT_TOKEN_EXPIRY_SKEW_SECONDS = 60
# The base of the rejection backoff: the n-th token in a row minted in answer to a rejection is replaced on the
# next rejection only once it is base * 2**(n-1) old (capped by the token's normal replacement age).
DEFAULT_REJECTED_TOKEN_COOLDOWN_SECONDS = 60
# At most one forced IdP request per 10 minutes and credentials version: AWS advises at most one PutSecretValue
# per 10 minutes, and consumers may invoke {"reason": "forced"} too.
DEFAULT_FORCED_REFRESH_INTERVAL_SECONDS = 600
# Scheduled retries of credentials the IdP rejected back off from the same base up to this: after the first
# hour a broken credential costs two IdP requests an hour, and the schedule's alarm keeps firing meanwhile.
DEFAULT_CREDENTIALS_RETRY_CAP_SECONDS = 1800
# Below 5 minutes a single failed scheduled run could let the token expire.
MIN_REFRESH_MARGIN_SECONDS = 300
MAX_REFRESH_MARGIN_SECONDS = 3300
# A consumer's skew never exceeds the smallest refresh margin: a token the consumers treat as expired is then
# always one the refresher replaces when asked. Above it, every call would fail while the token has between
# margin and skew left (the refresher answers "fresh" to each on-demand request).
MAX_TOKEN_EXPIRY_SKEW_SECONDS = MIN_REFRESH_MARGIN_SECONDS


def validate_url(url: str, *, variable: str) -> str:
    """Accept https URLs anywhere, plain http only on loopback (local emulators and tests)."""
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:  # e.g. "Invalid IPv6 URL" for an unbalanced "["
        raise ConfigurationError(variable, "is not a valid URL") from None
    if not hostname:
        raise ConfigurationError(variable, "is not an absolute URL with a host")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and _is_loopback(hostname):
        return url
    raise ConfigurationError(variable, "must use https:// (http:// is accepted only for loopback hosts)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def required_setting(name: str, env: Mapping[str, str] | None = None) -> str:
    """A function-specific variable (e.g. DEAD_LETTER_QUEUE_URL), read at handler entry."""
    return _required(os.environ if env is None else env, name)


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigurationError(name, "is required but not set")
    return value


def _int_in_range(env: Mapping[str, str], name: str, default: int, low: int, high: int, *, why: str = "") -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(name, f"must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        because = f" ({why})" if why else ""
        raise ConfigurationError(name, f"must be between {low} and {high}{because}, got {value}")
    return value


@dataclass(frozen=True)
class RefresherSettings:
    credentials_secret_id: str
    token_secret_id: str
    token_url: str = DEFAULT_TOKEN_URL
    audience: str = DEFAULT_AUDIENCE
    refresh_margin_seconds: int = DEFAULT_REFRESH_MARGIN_SECONDS
    rejected_cooldown_seconds: int = DEFAULT_REJECTED_TOKEN_COOLDOWN_SECONDS
    forced_interval_seconds: int = DEFAULT_FORCED_REFRESH_INTERVAL_SECONDS
    credentials_retry_cap_seconds: int = DEFAULT_CREDENTIALS_RETRY_CAP_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RefresherSettings:
        env = os.environ if env is None else env
        token_url = env.get("USAGE_ENGINE_TOKEN_URL", "").strip() or DEFAULT_TOKEN_URL
        audience = env.get("USAGE_ENGINE_AUDIENCE", "").strip() or DEFAULT_AUDIENCE
        return cls(
            credentials_secret_id=_required(env, "CREDENTIALS_SECRET_ID"),
            token_secret_id=_required(env, "TOKEN_SECRET_ID"),
            token_url=validate_url(token_url, variable="USAGE_ENGINE_TOKEN_URL"),
            audience=validate_url(audience, variable="USAGE_ENGINE_AUDIENCE"),
            refresh_margin_seconds=_int_in_range(
                env,
                "REFRESH_MARGIN_SECONDS",
                DEFAULT_REFRESH_MARGIN_SECONDS,
                MIN_REFRESH_MARGIN_SECONDS,
                MAX_REFRESH_MARGIN_SECONDS,
            ),
            rejected_cooldown_seconds=_int_in_range(
                env, "REJECTED_TOKEN_COOLDOWN_SECONDS", DEFAULT_REJECTED_TOKEN_COOLDOWN_SECONDS, 0, 900
            ),
        )


# A connection's name becomes part of its variables' names (USAGE_ENGINE_<NAME>_...), so only what an
# environment variable name may hold, and short enough to keep those names readable.
_CONNECTION_NAME = re.compile(r"[A-Za-z0-9_]{1,32}")


@dataclass(frozen=True)
class ConsumerVariables:
    """The names of the environment variables one connection is configured by."""

    token_secret_id: str
    api_url: str
    refresher_function: str
    token_expiry_skew_seconds: str


DEFAULT_CONNECTION_VARIABLES = ConsumerVariables(
    token_secret_id="TOKEN_SECRET_ID",
    api_url="USAGE_ENGINE_API_URL",
    refresher_function="TOKEN_REFRESHER_FUNCTION",
    token_expiry_skew_seconds="TOKEN_EXPIRY_SKEW_SECONDS",
)


def consumer_variables(connection: str | None = None) -> ConsumerVariables:
    """The variables of `connection`: None is the default connection (TOKEN_SECRET_ID, ...); a name (any case;
    letters, digits, underscores, 1-32 characters) reads USAGE_ENGINE_<NAME>_TOKEN_SECRET_ID and so on."""
    if connection is None:
        return DEFAULT_CONNECTION_VARIABLES
    if not _CONNECTION_NAME.fullmatch(connection):
        raise ConfigurationError(
            "USAGE_ENGINE_<NAME>_*", f"connection name {connection[:40]!r} is not 1-32 letters, digits or underscores"
        )
    prefix = f"USAGE_ENGINE_{connection.upper()}_"
    return ConsumerVariables(
        token_secret_id=prefix + "TOKEN_SECRET_ID",
        api_url=prefix + "API_URL",
        refresher_function=prefix + "REFRESHER_FUNCTION",
        token_expiry_skew_seconds=prefix + "TOKEN_EXPIRY_SKEW_SECONDS",
    )


@dataclass(frozen=True)
class ConsumerSettings:
    """What a consumer needs to call one Usage Engine: its token secret, API, refresher and expiry skew.

    The composition root keys each container's client by these settings, so two connections (an EU and a US
    tenant, production and sandbox credentials) get their own client, token recovery and hold-off.
    """

    token_secret_id: str
    api_url: str = DEFAULT_API_URL
    refresher_function: str | None = None
    token_expiry_skew_seconds: int = DEFAULT_TOKEN_EXPIRY_SKEW_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, connection: str | None = None) -> ConsumerSettings:
        """The settings of `connection` (None: the default connection) from `env` (default: os.environ).

        The default connection reads TOKEN_SECRET_ID (required), USAGE_ENGINE_API_URL (default: the EU API),
        TOKEN_REFRESHER_FUNCTION and TOKEN_EXPIRY_SKEW_SECONDS. A named connection, e.g. "us" (any case), reads
        USAGE_ENGINE_US_TOKEN_SECRET_ID, USAGE_ENGINE_US_API_URL, USAGE_ENGINE_US_REFRESHER_FUNCTION and
        USAGE_ENGINE_US_TOKEN_EXPIRY_SKEW_SECONDS, with the same rules, except that its API URL is required: a
        named connection exists to reach another tenant or region, and a silent EU default would send its
        tokens to the wrong API. ConfigurationError names the variable that is missing or invalid.
        """
        env = os.environ if env is None else env
        names = consumer_variables(connection)
        if connection is None:
            api_url = env.get(names.api_url, "").strip() or DEFAULT_API_URL
        else:
            api_url = _required(env, names.api_url)
        return cls(
            token_secret_id=_required(env, names.token_secret_id),
            api_url=validate_url(api_url, variable=names.api_url).rstrip("/"),
            refresher_function=env.get(names.refresher_function, "").strip() or None,
            token_expiry_skew_seconds=_int_in_range(
                env,
                names.token_expiry_skew_seconds,
                DEFAULT_TOKEN_EXPIRY_SKEW_SECONDS,
                0,
                MAX_TOKEN_EXPIRY_SKEW_SECONDS,
                why="at most the refresher's smallest REFRESH_MARGIN_SECONDS, so that a token consumers treat "
                "as expired is always one the refresher replaces",
            ),
        )
