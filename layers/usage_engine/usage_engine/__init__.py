"""usage_engine: call DigitalRoute Usage Engine Cloud Edition APIs from AWS Lambda with a shared token.

Importing this package does no I/O and reads no settings; handlers call `from_env()` at invocation time.
Every per-container object is built by the composition root (`components()`); see docs/architecture.md.
"""

from .api_client import UsageEngineClient
from .composition import Components, components, reset_components
from .credentials import ClientCredentials, parse_credentials
from .dead_letter import DeadLetterQueue
from .deadline import Deadline, current_deadline, deadline_scope
from .errors import (
    AuthenticationError,
    ConfigurationError,
    CredentialsError,
    CredentialsRejectedError,
    DeadLetterError,
    DeadlineExceededError,
    IdpError,
    IdpRejectedError,
    IdpUnavailableError,
    MalformedMessageError,
    RefreshFailedError,
    RefreshHoldOffError,
    RefreshRequestError,
    RefreshUnavailableError,
    RetryableMessageError,
    SecretStoreError,
    TokenFormatError,
    TokenRejectedError,
    TokenResponseError,
    TokenUnavailableError,
    UsageEngineApiError,
    UsageEngineError,
)
from .idp import ClientCredentialsExchange, IssuedToken, parse_token_response
from .meter_events import MessageOutcome, MeterEventHandler
from .metering import UsageMeteringApi
from .observability import publish_api_calls
from .provider import TokenProvider
from .recovery import TokenRecovery
from .refresh_requester import LambdaRefreshRequester, RefreshAnswer
from .refresher import (
    Decision,
    RefreshOutcome,
    RefreshRequest,
    TokenRefresher,
    decide,
)
from .settings import ConsumerSettings, RefresherSettings
from .states import DecisionReason, MessageAction, RefreshReason, RefreshResult, TokenProblem
from .token import AccessToken, RefreshRecord, decode_token, encode_token, fingerprint
from .token_store import StoredToken, TokenStore

__all__ = [
    "AccessToken",
    "AuthenticationError",
    "ClientCredentials",
    "ClientCredentialsExchange",
    "Components",
    "ConfigurationError",
    "ConsumerSettings",
    "CredentialsError",
    "CredentialsRejectedError",
    "DeadLetterError",
    "DeadLetterQueue",
    "Deadline",
    "DeadlineExceededError",
    "Decision",
    "DecisionReason",
    "IdpError",
    "IdpRejectedError",
    "IdpUnavailableError",
    "IssuedToken",
    "LambdaRefreshRequester",
    "MalformedMessageError",
    "MessageAction",
    "MessageOutcome",
    "MeterEventHandler",
    "RefreshAnswer",
    "RefreshFailedError",
    "RefreshHoldOffError",
    "RefreshOutcome",
    "RefreshReason",
    "RefreshRecord",
    "RefreshRequest",
    "RefreshRequestError",
    "RefreshResult",
    "RefreshUnavailableError",
    "RefresherSettings",
    "RetryableMessageError",
    "SecretStoreError",
    "StoredToken",
    "TokenFormatError",
    "TokenProblem",
    "TokenProvider",
    "TokenRecovery",
    "TokenRefresher",
    "TokenRejectedError",
    "TokenResponseError",
    "TokenStore",
    "TokenUnavailableError",
    "UsageEngineApiError",
    "UsageEngineClient",
    "UsageEngineError",
    "UsageMeteringApi",
    "components",
    "current_deadline",
    "deadline_scope",
    "decide",
    "decode_token",
    "encode_token",
    "fingerprint",
    "parse_credentials",
    "parse_token_response",
    "publish_api_calls",
    "reset_components",
]
