"""The Usage Engine emulator's HTTP side: requests framed off the wire, replies put back on it.

What each request gets is decided by `UsageEngineEmulator` (local/usage_engine_emulator.py), which passes
its dispatcher to `EmulatorServer`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from local.loopback_http import LoopbackHTTPServer, LoopbackRequestHandler, Reply
from local.usage_engine_state import Response, json_response, oauth_error

MAX_BODY_BYTES = 1024 * 1024
# Oversized bodies up to this size are read and dropped so the 413 reaches the client intact.
MAX_DRAIN_BYTES = 16 * MAX_BODY_BYTES


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    authorization: str | None
    body: bytes | None  # None: over MAX_BODY_BYTES, answered with 413


Dispatch = Callable[[Request], Response]


def parse_form(request: Request) -> tuple[dict[str, str], Response | None]:
    """Return the form fields, or an error response; never raises, so rate limiting can still key on it."""
    media_type = request.content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        return {}, oauth_error(400, "invalid_request", "Content-Type must be application/x-www-form-urlencoded")
    try:
        raw = parse_qs((request.body or b"").decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        return {}, oauth_error(400, "invalid_request", "Malformed form body")
    form = {name: values[0] for name, values in raw.items()}
    duplicated = sorted(name for name, values in raw.items() if len(values) > 1)
    if duplicated:
        return form, oauth_error(400, "invalid_request", f"Parameter repeated: {duplicated[0]}")
    return form, None


class _Handler(LoopbackRequestHandler):
    server: EmulatorServer

    def do_PATCH(self) -> None:  # noqa: N802 - http.server looks handlers up as do_<METHOD>
        self._serve()

    def length_required(self) -> Reply:
        return _wire(json_response(411, {"error": "length_required"}))

    def invalid_length(self) -> Reply:
        return _wire(json_response(400, {"error": "invalid Content-Length"}))

    def read_body(self, length: int) -> bytes | None:
        if length > MAX_DRAIN_BYTES:
            # The unread body would be parsed as the next request: this connection ends after the 413.
            self.close_connection = True
            return None
        if length > MAX_BODY_BYTES:
            # Read and drop it: closing with unread data makes the kernel send RST, and the client
            # would see "connection reset" instead of the 413.
            remaining = length
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 65536))
                if not chunk:
                    break
                remaining -= len(chunk)
            return None
        return self.rfile.read(length)

    def dispatch(self, body: bytes | None) -> Reply:
        target = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=target.path,
            query=parse_qs(target.query, keep_blank_values=True),
            content_type=self.headers.get("Content-Type", ""),
            authorization=self.headers.get("Authorization"),
            body=body,
        )
        try:
            response = self.server.dispatch_request(request)
        except Exception:
            # A user callback (transform, on_token_issued) failed: answer, then let the server log it.
            self.close_connection = True
            self.send_reply(_wire(json_response(500, {"error": "internal_error"})))
            raise
        return _wire(response)


def _wire(response: Response) -> Reply:
    # A 204 has no body, so it carries no Content-Type either.
    if response.status == 204:
        return Reply(response.status, response.body, response.headers)
    return Reply(response.status, response.body, (*response.headers, ("Content-Type", response.content_type)))


class EmulatorServer(LoopbackHTTPServer):
    def __init__(self, dispatch: Dispatch) -> None:
        self.dispatch_request = dispatch
        super().__init__(_Handler)
