"""The HTTP API (payload format 2.0) side of a Lambda integration: read a route's path parameter, answer JSON.

A function behind one API Gateway route needs two things from an event handler framework: the route's
path parameter and a well-formed response. Powertools' event handler does both but imports every resolver
and event class on the way (about 30 ms of a cold start with bytecode, more without; benchmarks/RESULTS.md,
section 4), so the layer does these two things itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypedDict


class HttpApiResponse(TypedDict):
    statusCode: int
    headers: dict[str, str]
    body: str
    isBase64Encoded: bool


def route_of(event: Mapping[str, Any]) -> str | None:
    """The route key API Gateway matched ("GET /users/{userId}/meters"), None for an event of another kind."""
    route = event.get("routeKey")
    return route if isinstance(route, str) else None


def path_parameter(event: Mapping[str, Any], name: str) -> str | None:
    """The route's path parameter `name` as API Gateway decoded it, None when absent or not a string."""
    parameters = event.get("pathParameters")
    value = parameters.get(name) if isinstance(parameters, Mapping) else None
    return value if isinstance(value, str) else None


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> HttpApiResponse:
    """An HTTP API answer with a compact JSON body."""
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", **(headers or {})},
        "body": json.dumps(body, separators=(",", ":")),
        "isBase64Encoded": False,
    }


def json_error(status: int, code: str, message: str, *, retry_after: str | None = None) -> HttpApiResponse:
    """The error form every route answers with: `{"error": {"code", "message"}}`, and Retry-After if given."""
    return json_response(
        status,
        {"error": {"code": code, "message": message}},
        {"Retry-After": retry_after} if retry_after else None,
    )
