"""Short, log-safe texts taken from what a peer answered: an error code from a JSON body, an AWS error code.

A peer's body may echo what was sent (credentials, tokens): only a value that passes a strict check leaves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from botocore.exceptions import ClientError

MAX_REASON_LENGTH = 120
_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def is_code(value: str) -> bool:
    """An error code such as `invalid_client` or `Runtime.ImportModuleError`."""
    return _CODE.fullmatch(value) is not None


def is_short_sentence(value: str) -> bool:
    return 0 < len(value) <= MAX_REASON_LENGTH and value.isprintable()


def json_field(body: bytes | str | Any, keys: Sequence[str], accept: Callable[[str], bool]) -> str | None:
    """The first of `keys` in a JSON object body whose string value `accept`s; None for anything else.

    `body` may be already-parsed JSON (a dict) or its bytes/text.
    """
    if isinstance(body, bytes | str):
        try:
            body = json.loads(body)
        except (ValueError, RecursionError):
            return None
    if not isinstance(body, dict):
        return None
    for key in keys:
        value = body.get(key)
        if isinstance(value, str) and accept(value):
            return value
    return None


def client_error_code(error: ClientError) -> str:
    """The AWS error code of a ClientError (e.g. `ThrottlingException`), never its message."""
    code = error.response.get("Error", {}).get("Code")
    return str(code) if code else "Unknown"
