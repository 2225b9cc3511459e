"""Ask the refresher Lambda for a new token (synchronous invoke), as consumers do on expiry or rejection."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError

from .deadline import DeadlineBoundClient
from .errors import RefreshUnavailableError
from .safe_text import client_error_code, json_field
from .states import RefreshReason, RefreshResult

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient


_FINGERPRINT = re.compile(r"[0-9a-f]{16}")
# Less than this left: asking the refresher cannot finish in time (it reads two secrets and calls the IdP).
MIN_INVOKE_SECONDS = 1.0

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefreshAnswer:
    """What the refresher answered: the outcome, and the fingerprint of the token the secret now holds
    (so the caller can re-read until it sees that very token: replicas and caches lag behind a write)."""

    result: RefreshResult
    token_fingerprint: str | None = None


class LambdaRefreshRequester:
    def __init__(
        self,
        client: LambdaClient,
        function_name: str,
        *,
        client_within: Callable[[float], LambdaClient] | None = None,
        full_wait_seconds: float = 0.0,
    ) -> None:
        self._clients = DeadlineBoundClient(client, client_within, full_wait_seconds=full_wait_seconds)
        self.function_name = function_name

    def request(self, reason: RefreshReason, token_fingerprint: str | None = None) -> RefreshAnswer:
        """`busy` means another refresh is running (the refresher has reserved concurrency 1) or this wait
        ended first: the caller should wait a little and re-read the token secret rather than fail.

        The invoke ends by the current deadline: with less time left than the client's own read timeout, a
        client whose timeouts end in time (`client_within`) makes one attempt."""
        payload: dict[str, str] = {"reason": str(reason)}
        if token_fingerprint is not None:
            payload["token_fingerprint"] = token_fingerprint
        client = self._clients.for_now("asking the token refresher", min_seconds=MIN_INVOKE_SECONDS)
        try:
            response = client.invoke(
                FunctionName=self.function_name,
                InvocationType="RequestResponse",
                Payload=json.dumps(payload).encode(),
            )
        except ClientError as error:
            code = client_error_code(error)
            if code in ("TooManyRequestsException", "ResourceConflictException"):
                logger.debug("Token refresher busy", extra={"cause": code})
                return RefreshAnswer(RefreshResult.BUSY)
            raise RefreshUnavailableError(f"invoking the token refresher failed: {code}") from None
        except ReadTimeoutError:
            # The refresh is still running; its result lands in the token secret.
            logger.debug("Token refresher busy", extra={"cause": "ReadTimeoutError"})
            return RefreshAnswer(RefreshResult.BUSY)
        except BotoCoreError as error:
            raise RefreshUnavailableError(f"invoking the token refresher failed: {type(error).__name__}") from None
        body = response["Payload"].read()
        if response.get("FunctionError"):
            raise RefreshUnavailableError(f"the token refresher failed: {_error_type(body)}")
        try:
            result = json.loads(body)
        except (ValueError, RecursionError):
            raise RefreshUnavailableError("the token refresher returned a non-JSON answer") from None
        if not isinstance(result, dict):
            return RefreshAnswer(RefreshResult.SKIPPED)
        refreshed = result.get("refreshed") is True
        fingerprint = result.get("token_fingerprint")
        return RefreshAnswer(
            RefreshResult.REFRESHED if refreshed else RefreshResult.SKIPPED,
            fingerprint if isinstance(fingerprint, str) and _FINGERPRINT.fullmatch(fingerprint) else None,
        )


def _error_type(body: bytes) -> str:
    # The refresher's error messages are secret-free by design, but only the type is needed here.
    return json_field(body, ("errorType",), str.isidentifier) or "unknown error"
