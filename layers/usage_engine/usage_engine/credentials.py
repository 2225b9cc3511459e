"""The credentials secret: the client id/secret of a Usage Engine application access."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigurationError, CredentialsError
from .settings import validate_url

# The Usage Engine UI offers camelCase keys when an application access is created; operators paste either.
_ALIASES = {"client_id": ("client_id", "clientId"), "client_secret": ("client_secret", "clientSecret")}
OPTIONAL_KEYS = ("audience", "token_url")
# Every key the parser reads; anything else in a document is ignored.
KNOWN_KEYS = frozenset({*_ALIASES["client_id"], *_ALIASES["client_secret"], *OPTIONAL_KEYS})


@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    client_secret: str = field(repr=False)
    audience: str | None = None
    token_url: str | None = None


def parse_credentials(secret_string: str) -> ClientCredentials:
    """Parse the credentials secret; errors name the field, never its value."""
    try:
        data = json.loads(secret_string)
    except (ValueError, TypeError, RecursionError):
        raise CredentialsError("(document)", "is not valid JSON") from None
    if not isinstance(data, dict):
        raise CredentialsError("(document)", "is not a JSON object")
    client_id = _field(data, "client_id")
    client_secret = _field(data, "client_secret")
    return ClientCredentials(
        client_id=client_id,
        client_secret=client_secret,
        audience=_optional_url(data, "audience"),
        token_url=_optional_url(data, "token_url"),
    )


def encode_credentials(credentials: ClientCredentials) -> str:
    """The credentials secret's canonical document: snake_case keys, optional ones only when set."""
    document = {"client_id": credentials.client_id, "client_secret": credentials.client_secret}
    for key in OPTIONAL_KEYS:
        value = getattr(credentials, key)
        if value is not None:
            document[key] = value
    return json.dumps(document)


def _field(data: dict[str, Any], name: str) -> str:
    present = [key for key in _ALIASES[name] if key in data]
    if not present:
        raise CredentialsError(name, "is missing")
    if len(present) > 1 and data[present[0]] != data[present[1]]:
        raise CredentialsError(name, f"is given twice ({' and '.join(present)}) with different values")
    value = data[present[0]]
    if not isinstance(value, str) or not value.strip():
        raise CredentialsError(name, "must be a non-empty string")
    return value.strip()


def _optional_url(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise CredentialsError(name, "must be a non-empty string when present")
    try:
        return validate_url(value.strip(), variable=name)
    except ConfigurationError as error:
        raise CredentialsError(name, "must be an https:// URL (http:// only for loopback)") from error
