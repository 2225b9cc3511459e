"""moto in server mode on a free loopback port: boto3 reaches it over real HTTP via AWS_ENDPOINT_URL.

Wraps moto's WSGI app (what moto's ThreadedMotoServer serves) with a counter of AWS operations, so
tests and benchmarks can assert how many GetSecretValue/PutSecretValue calls really reached "AWS".
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import requests
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

from local.template import REGION

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class MotoServer:
    def __init__(self) -> None:
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.endpoint_url = ""

    def start(self) -> MotoServer:
        # werkzeug logs every request to stderr; the demo and the tests want a readable output.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            "127.0.0.1", 0, self._counting(app), threaded=True, request_handler=MotoRequestHandler
        )
        host, port = self._server.server_address[:2]
        self.endpoint_url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _counting(self, app: WsgiApp) -> WsgiApp:
        def counting_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            # JSON-protocol services (Secrets Manager, ...) name the operation in X-Amz-Target.
            target = environ.get("HTTP_X_AMZ_TARGET")
            if target:
                with self._lock:
                    self._calls[target.split(".")[-1]] += 1
            return app(environ, start_response)

        return counting_app

    def calls(self, operation: str) -> int:
        """How many requests of `operation` (e.g. "GetSecretValue") reached the server."""
        with self._lock:
            return self._calls[operation]

    def reset(self) -> None:
        """Forget every resource (moto's own reset API) and the call counters, between tests."""
        requests.post(f"{self.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()
        with self._lock:
            self._calls.clear()

    def environment(self) -> dict[str, str]:
        """The variables that point boto3 at this server, with dummy credentials (no AWS account here)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
        }

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
