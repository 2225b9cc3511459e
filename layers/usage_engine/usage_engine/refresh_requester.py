"""Ask the refresher Lambda for a new token (synchronous invoke), as consumers do on expiry or rejection."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Literal

from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError

from .errors import RefreshUnavailableError

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient

RefreshResult = Literal["refreshed", "skipped", "busy"]


class LambdaRefreshRequester:
    def __init__(self, client: LambdaClient, function_name: str) -> None:
        self._client = client
        self.function_name = function_name

    def request(self, reason: str, token_fingerprint: str | None = None) -> RefreshResult:
        """`busy` means another refresh is running (the refresher has reserved concurrency 1): the caller
        should wait a little and re-read the token secret rather than fail."""
        payload: dict[str, str] = {"reason": reason}
        if token_fingerprint is not None:
            payload["token_fingerprint"] = token_fingerprint
        try:
            response = self._client.invoke(
                FunctionName=self.function_name,
                InvocationType="RequestResponse",
                Payload=json.dumps(payload).encode(),
            )
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", "Unknown"))
            if code in ("TooManyRequestsException", "ResourceConflictException"):
                return "busy"
            raise RefreshUnavailableError(f"invoking the token refresher failed: {code}") from None
        except ReadTimeoutError:
            # The refresh is still running; its result lands in the token secret.
            return "busy"
        except BotoCoreError as error:
            raise RefreshUnavailableError(f"invoking the token refresher failed: {type(error).__name__}") from None
        body = response["Payload"].read()
        if response.get("FunctionError"):
            raise RefreshUnavailableError(f"the token refresher failed: {_error_type(body)}")
        try:
            result = json.loads(body)
        except (ValueError, RecursionError):
            raise RefreshUnavailableError("the token refresher returned a non-JSON answer") from None
        return "refreshed" if isinstance(result, dict) and result.get("refreshed") is True else "skipped"


def _error_type(body: bytes) -> str:
    # The refresher's error messages are secret-free by design, but only the type is needed here.
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return "unknown error"
    error_type = data.get("errorType") if isinstance(data, dict) else None
    return error_type if isinstance(error_type, str) and error_type.isidentifier() else "unknown error"
