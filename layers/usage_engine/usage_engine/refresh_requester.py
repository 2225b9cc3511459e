"""Ask the refresher Lambda for a new token (synchronous invoke), as consumers do on expiry or rejection."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError

from .errors import RefreshUnavailableError
from .safe_text import client_error_code, json_field
from .states import RefreshReason, RefreshResult

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient


class LambdaRefreshRequester:
    def __init__(self, client: LambdaClient, function_name: str) -> None:
        self._client = client
        self.function_name = function_name

    def request(self, reason: RefreshReason, token_fingerprint: str | None = None) -> RefreshResult:
        """`busy` means another refresh is running (the refresher has reserved concurrency 1): the caller
        should wait a little and re-read the token secret rather than fail."""
        payload: dict[str, str] = {"reason": str(reason)}
        if token_fingerprint is not None:
            payload["token_fingerprint"] = token_fingerprint
        try:
            response = self._client.invoke(
                FunctionName=self.function_name,
                InvocationType="RequestResponse",
                Payload=json.dumps(payload).encode(),
            )
        except ClientError as error:
            code = client_error_code(error)
            if code in ("TooManyRequestsException", "ResourceConflictException"):
                return RefreshResult.BUSY
            raise RefreshUnavailableError(f"invoking the token refresher failed: {code}") from None
        except ReadTimeoutError:
            # The refresh is still running; its result lands in the token secret.
            return RefreshResult.BUSY
        except BotoCoreError as error:
            raise RefreshUnavailableError(f"invoking the token refresher failed: {type(error).__name__}") from None
        body = response["Payload"].read()
        if response.get("FunctionError"):
            raise RefreshUnavailableError(f"the token refresher failed: {_error_type(body)}")
        try:
            result = json.loads(body)
        except (ValueError, RecursionError):
            raise RefreshUnavailableError("the token refresher returned a non-JSON answer") from None
        return (
            RefreshResult.REFRESHED
            if isinstance(result, dict) and result.get("refreshed") is True
            else RefreshResult.SKIPPED
        )


def _error_type(body: bytes) -> str:
    # The refresher's error messages are secret-free by design, but only the type is needed here.
    return json_field(body, ("errorType",), str.isidentifier) or "unknown error"
