"""usage_engine: call DigitalRoute Usage Engine Cloud Edition APIs from AWS Lambda with a shared token.

Importing this package does no I/O and reads no settings; handlers call `from_env()` at invocation time.
Every per-container object is built by the composition root (`components()`); see docs/architecture.md.

The public names below load their module on first use (PEP 562): `from usage_engine import UsageEngineClient`
imports the consumer's modules only, never the refresher's or the meter events' ones. Each Lambda's cold
start pays for what that function uses (benchmarks/RESULTS.md, section 4).
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

from .version import __version__

# The layer ships requests without a character-set detector (layers/usage_engine/requirements.txt): requests then
# decodes undeclared bodies as UTF-8, and would say so with a warning at every cold start.
warnings.filterwarnings("ignore", message="Unable to find acceptable character detection dependency")

if TYPE_CHECKING:
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
    from .idp import (
        ClientCredentialsExchange,
        IssuedToken,
        parse_token_response,
    )
    from .meter_events import MessageOutcome, MeterEventHandler
    from .metering import UsageMeteringApi
    from .observability import CallCounts, publish_api_calls, structured_layer_logs
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
    from .settings import ConsumerSettings, ConsumerVariables, RefresherSettings, consumer_variables
    from .states import (
        DecisionReason,
        MessageAction,
        RefreshReason,
        RefreshResult,
        TokenProblem,
    )
    from .token import (
        AccessToken,
        RefreshRecord,
        decode_token,
        encode_token,
        fingerprint,
    )
    from .token_store import StoredToken, TokenStore


# Public name -> the module that defines it (tests/unit/test_public_api.py keeps this, the imports above and
# __all__ the same).
_EXPORTS: dict[str, str] = {
    "AccessToken": ".token",
    "AuthenticationError": ".errors",
    "ClientCredentials": ".credentials",
    "ClientCredentialsExchange": ".idp",
    "Components": ".composition",
    "ConfigurationError": ".errors",
    "ConsumerSettings": ".settings",
    "ConsumerVariables": ".settings",
    "consumer_variables": ".settings",
    "CredentialsError": ".errors",
    "CredentialsRejectedError": ".errors",
    "DeadLetterError": ".errors",
    "DeadLetterQueue": ".dead_letter",
    "Deadline": ".deadline",
    "DeadlineExceededError": ".errors",
    "Decision": ".refresher",
    "DecisionReason": ".states",
    "IdpError": ".errors",
    "IdpRejectedError": ".errors",
    "IdpUnavailableError": ".errors",
    "IssuedToken": ".idp",
    "LambdaRefreshRequester": ".refresh_requester",
    "MalformedMessageError": ".errors",
    "MessageAction": ".states",
    "MessageOutcome": ".meter_events",
    "MeterEventHandler": ".meter_events",
    "RefreshAnswer": ".refresh_requester",
    "RefreshFailedError": ".errors",
    "RefreshHoldOffError": ".errors",
    "RefreshOutcome": ".refresher",
    "RefreshReason": ".states",
    "RefreshRecord": ".token",
    "RefreshRequest": ".refresher",
    "RefreshRequestError": ".errors",
    "RefreshResult": ".states",
    "RefreshUnavailableError": ".errors",
    "RefresherSettings": ".settings",
    "RetryableMessageError": ".errors",
    "SecretStoreError": ".errors",
    "StoredToken": ".token_store",
    "TokenFormatError": ".errors",
    "TokenProblem": ".states",
    "TokenProvider": ".provider",
    "TokenRecovery": ".recovery",
    "TokenRefresher": ".refresher",
    "TokenRejectedError": ".errors",
    "TokenResponseError": ".errors",
    "TokenStore": ".token_store",
    "TokenUnavailableError": ".errors",
    "UsageEngineApiError": ".errors",
    "UsageEngineClient": ".api_client",
    "UsageEngineError": ".errors",
    "UsageMeteringApi": ".metering",
    "components": ".composition",
    "current_deadline": ".deadline",
    "deadline_scope": ".deadline",
    "decide": ".refresher",
    "decode_token": ".token",
    "encode_token": ".token",
    "fingerprint": ".token",
    "parse_credentials": ".credentials",
    "parse_token_response": ".idp",
    "publish_api_calls": ".observability",
    "structured_layer_logs": ".observability",
    "CallCounts": ".observability",
    "reset_components": ".composition",
}

__all__ = [
    "AccessToken",
    "AuthenticationError",
    "CallCounts",
    "ClientCredentials",
    "ClientCredentialsExchange",
    "Components",
    "ConfigurationError",
    "ConsumerSettings",
    "ConsumerVariables",
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
    "__version__",
    "components",
    "consumer_variables",
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
    "structured_layer_logs",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
