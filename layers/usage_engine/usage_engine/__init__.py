"""usage_engine: call DigitalRoute Usage Engine Cloud Edition APIs from AWS Lambda with a shared token.

Importing this package does no I/O and reads no settings; handlers call `from_env()` at invocation time.
"""

from .credentials import ClientCredentials, parse_credentials
from .errors import (
    ConfigurationError,
    CredentialsError,
    IdpError,
    IdpRejectedError,
    IdpUnavailableError,
    RefreshRequestError,
    SecretStoreError,
    TokenFormatError,
    TokenResponseError,
    TokenUnavailableError,
    UsageEngineError,
)
from .idp import ClientCredentialsExchange, IssuedToken, parse_token_response
from .provider import TokenProvider
from .refresher import (
    Decision,
    RefreshFailedError,
    RefreshOutcome,
    RefreshRequest,
    TokenRefresher,
    decide,
)
from .settings import ConsumerSettings, RefresherSettings
from .token import AccessToken, decode_token, encode_token, fingerprint
from .token_store import StoredToken, TokenStore

__all__ = [
    "AccessToken",
    "ClientCredentials",
    "ClientCredentialsExchange",
    "ConfigurationError",
    "ConsumerSettings",
    "CredentialsError",
    "Decision",
    "IdpError",
    "IdpRejectedError",
    "IdpUnavailableError",
    "IssuedToken",
    "RefreshFailedError",
    "RefreshOutcome",
    "RefreshRequest",
    "RefreshRequestError",
    "RefresherSettings",
    "SecretStoreError",
    "StoredToken",
    "TokenFormatError",
    "TokenProvider",
    "TokenRefresher",
    "TokenResponseError",
    "TokenStore",
    "TokenUnavailableError",
    "UsageEngineError",
    "decide",
    "decode_token",
    "encode_token",
    "fingerprint",
    "parse_credentials",
    "parse_token_response",
]
