"""The HTTP plumbing shared by the local test servers (`local.lambda_endpoint`, `local.usage_engine_emulator`).

Both stand in for a remote service so that client code runs its real network path (connection reuse,
timeouts, retries) against a server on a free loopback port. What they share is the part that keeps such a
server fast, quiet and safe to tear down between tests, and that part is easy to get subtly wrong:

* `LoopbackRequestHandler` speaks HTTP/1.1 with keep-alive, because clients pool connections and a server
  that closes after every reply hides the bugs that pooling causes. Nagle's algorithm is off, because
  the status line and headers go out in one write and the body in another, and Nagle plus the client's
  delayed ACK would add about 40 ms to every call. Idle connections time out, so that clients that walk
  away do not pin handler threads. The access log is silenced, so that test output stays readable.
* It reads only bodies with a valid Content-Length. A chunked body or a bad length cannot be skipped, so
  its bytes would be parsed as the next request on the connection; those requests get an error reply
  (in the service's own error format, through `length_required` and `invalid_length`) and the
  connection closes after it.
* `LoopbackHTTPServer` binds 127.0.0.1 without resolving the host name, which HTTPServer does by default
  and which can stall for seconds on a machine without DNS. It remembers open connections so that
  `close_connections` can end idle keep-alive ones on stop, which would otherwise keep their handler
  threads serving after the test is over. It ignores ConnectionError, because clients giving up in the
  middle of a reply (their timeout shorter than the handler) is a normal part of what the tests do.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeAlias

_RequestSocket: TypeAlias = socket.socket | tuple[bytes, socket.socket]


@dataclass(frozen=True)
class Reply:
    """What a handler sends: `headers` go out as given, then Content-Length, unless the status is 204."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


class LoopbackRequestHandler(BaseHTTPRequestHandler):
    """Frames requests and replies; a subclass supplies its error replies and `dispatch`.

    GET, POST, PUT and DELETE are served; a subclass that also serves PATCH adds `do_PATCH` calling
    `_serve`. Other methods get http.server's own 501.
    """

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the default access log writes every request to stderr."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    # -- hooks -----------------------------------------------------------------------------------

    def length_required(self) -> Reply:
        """The 411 reply to a request with Transfer-Encoding (chunked bodies are not read)."""
        raise NotImplementedError

    def invalid_length(self) -> Reply:
        """The 400 reply to a Content-Length that is not a non-negative integer."""
        raise NotImplementedError

    def read_body(self, length: int) -> bytes | None:
        """The body of `length` bytes; a subclass may refuse a large one (None) after consuming it."""
        return self.rfile.read(length)

    def dispatch(self, body: bytes | None) -> Reply:
        """The reply to this request (`self.command`, `self.path`, `self.headers` and `body`)."""
        raise NotImplementedError

    # -- framing ---------------------------------------------------------------------------------

    def _serve(self) -> None:
        if "Transfer-Encoding" in self.headers:
            # Chunked bodies are not supported; the unread chunks would be parsed as the next request.
            self.close_connection = True
            self.send_reply(self.length_required())
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self.send_reply(self.invalid_length())
            return
        self.send_reply(self.dispatch(self.read_body(length)))

    def send_reply(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        # RFC 9110: a 204 has no body and must not carry a Content-Length.
        has_body = reply.status != 204
        if has_body:
            self.send_header("Content-Length", str(len(reply.body)))
        if self.close_connection:
            # Tells a pooling client not to send its next request down this connection.
            self.send_header("Connection", "close")
        self.end_headers()
        if has_body and reply.body:
            self.wfile.write(reply.body)


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threaded server on 127.0.0.1 and a free port, serving requests with `handler`."""

    daemon_threads = True
    # Benchmarks open many connections at once; the default backlog of 5 causes SYN retries.
    request_queue_size = 128

    def __init__(self, handler: type[LoopbackRequestHandler]) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name, which can stall on machines without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = int(self.server_address[1])

    def process_request(self, request: _RequestSocket, client_address: Any) -> None:
        if isinstance(request, socket.socket):
            with self._connections_lock:
                self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: _RequestSocket) -> None:
        if isinstance(request, socket.socket):
            with self._connections_lock:
                self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: _RequestSocket, client_address: Any) -> None:
        # A client giving up mid-response (its read timeout is shorter than the handler) is normal.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def serve_in_background(self, name: str) -> threading.Thread:
        """Serve on a started daemon thread named `name:PORT`; end it with `shutdown`."""
        thread = threading.Thread(
            target=self.serve_forever,
            # A short poll keeps shutdown() (and so every test teardown) fast.
            kwargs={"poll_interval": 0.05},
            name=f"{name}:{self.server_port}",
            daemon=True,
        )
        thread.start()
        return thread

    def close_connections(self) -> None:
        """Shut down every connection still open (call after `shutdown`, before `server_close`)."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            # OSError: the handler closed it in the meantime.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
