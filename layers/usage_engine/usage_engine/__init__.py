"""usage_engine: call DigitalRoute Usage Engine Cloud Edition APIs from AWS Lambda with a shared token.

Importing this package does no I/O and reads no settings; handlers call `from_env()` at invocation time.
"""

from .api_client import UsageEngineClient
from .credentials import ClientCredentials, parse_credentials
from .dead_letter import DeadLetterError, DeadLetterQueue
from .errors import (
    AuthenticationError,
    ConfigurationError,
    CredentialsError,
    IdpError,
    IdpRejectedError,
    IdpUnavailableError,
    RefreshRequestError,
    RefreshUnavailableError,
    SecretStoreError,
    TokenFormatError,
    TokenResponseError,
    TokenUnavailableError,
    UsageEngineApiError,
    UsageEngineError,
)
from .idp import ClientCredentialsExchange, IssuedToken, parse_token_response
from .meter_events import MalformedMessageError, MessageOutcome, MeterEventHandler, RetryableMessageError
from .metering import UsageMeteringApi
from .observability import publish_api_calls
from .provider import TokenProvider
from .refresh_requester import LambdaRefreshRequester
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
    "AuthenticationError",
    "ClientCredentials",
    "ClientCredentialsExchange",
    "ConfigurationError",
    "ConsumerSettings",
    "CredentialsError",
    "DeadLetterError",
    "DeadLetterQueue",
    "Decision",
    "IdpError",
    "IdpRejectedError",
    "IdpUnavailableError",
    "IssuedToken",
    "LambdaRefreshRequester",
    "MalformedMessageError",
    "MessageOutcome",
    "MeterEventHandler",
    "RefreshFailedError",
    "RefreshOutcome",
    "RefreshRequest",
    "RefreshRequestError",
    "RefreshUnavailableError",
    "RefresherSettings",
    "RetryableMessageError",
    "SecretStoreError",
    "StoredToken",
    "TokenFormatError",
    "TokenProvider",
    "TokenRefresher",
    "TokenResponseError",
    "TokenStore",
    "TokenUnavailableError",
    "UsageEngineApiError",
    "UsageEngineClient",
    "UsageEngineError",
    "UsageMeteringApi",
    "decide",
    "decode_token",
    "encode_token",
    "fingerprint",
    "parse_credentials",
    "parse_token_response",
    "publish_api_calls",
]
