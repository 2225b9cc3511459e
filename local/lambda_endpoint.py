"""A local stand-in for the AWS Lambda Invoke API, so real boto3 `lambda` clients work without AWS or Docker.

It serves the subset of the API that `sam local start-lambda` offers, on a free loopback port, and runs
each function's handler in this process through `local.lambda_runtime` (one fresh `LocalLambdaContext`
per invocation, the process environment as the function's environment). Point boto3 at it with
`AWS_ENDPOINT_URL_LAMBDA` (see `environment()`); that service-specific variable wins over
`AWS_ENDPOINT_URL`, so Secrets Manager can stay on moto while Lambda calls land here.

Emulated, with the status codes, headers and error codes botocore maps to its typed exceptions:

* `POST /2015-03-31/functions/{FunctionName}/invocations`, where FunctionName is a name, a partial ARN
  (`ACCOUNT:function:NAME`) or a full ARN, optionally with a `:qualifier`;
* `X-Amz-Invocation-Type`: `RequestResponse` (200 and the result, `X-Amz-Executed-Version: $LATEST`),
  `Event` (202, the handler runs on a background thread) and `DryRun` (204, nothing runs);
* a handler exception: 200 with `X-Amz-Function-Error: Unhandled` and the runtime's error document
  (`errorMessage`, `errorType`, `requestId`, and an empty `stackTrace`: traceback lines can carry values);
* unknown function: 404 `ResourceNotFoundException`; a payload that is not JSON: 400
  `InvalidRequestContentException`;
* reserved concurrency: a synchronous invoke beyond the limit gets 429 `TooManyRequestsException`
  (Reason `ReservedFunctionConcurrentInvocationLimitExceeded`); an `Event` invoke is accepted and waits
  for a free slot, as Lambda's internal queue does. A limit of 0 throttles every synchronous invoke.

Not emulated: aliases and versions (any qualifier runs the one code as `$LATEST`), Lambda's retries of
failed `Event` invocations and their destinations or dead-letter queues, payload and response size
limits, timeouts and memory limits, `X-Amz-Log-Type: Tail` (no `LogResult`), client context, request
signing and IAM. Concurrent invocations share one process and its module globals, where Lambda would
give each its own execution environment.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from local.lambda_runtime import FUNCTIONS, LocalLambdaContext, load_module
from local.loopback_http import LoopbackHTTPServer, LoopbackRequestHandler
from local.loopback_http import Reply as _Reply

_INVOKE_PATH = re.compile(r"^/2015-03-31/functions/(?P<function>[^/]+)/invocations$")
# Lambda's own FunctionName forms: NAME, NAME:QUALIFIER, ACCOUNT:function:NAME[:Q], full ARN[:Q].
_FUNCTION_NAME = re.compile(
    r"^(?:arn:aws[a-zA-Z-]*:lambda:[a-z0-9-]+:\d{12}:function:|\d{12}:function:)?"
    r"(?P<name>[A-Za-z0-9_-]{1,64})(?::(?P<qualifier>\$LATEST|[A-Za-z0-9_-]{1,128}))?$"
)
_INVOCATION_TYPES = frozenset({"RequestResponse", "Event", "DryRun"})
_JSON = "application/json"


def _json_reply(status: int, document: Any, headers: tuple[tuple[str, str], ...] = ()) -> _Reply:
    return _Reply(status, json.dumps(document).encode(), (("Content-Type", _JSON), *headers))


def _service_error(status: int, error_type: str, message: str, **extra: str) -> _Reply:
    # rest-json: botocore takes the error code from this header and builds the modeled exception.
    document = {**extra, "Type": "User", "message": message}
    return _json_reply(status, document, (("x-amzn-ErrorType", error_type),))


@dataclass
class _Function:
    folder: str
    limit: int | None
    slots: threading.Condition = field(default_factory=threading.Condition)
    running: int = 0
    completed: int = 0
    throttled: int = 0


class LocalLambdaEndpoint:
    """The Invoke API for `functions` (caller-facing name -> folder under functions/). Use `with`, or start/stop."""

    def __init__(self, functions: Mapping[str, str], *, reserved_concurrency: Mapping[str, int] | None = None) -> None:
        limits = dict(reserved_concurrency or {})
        unknown = sorted(set(limits) - set(functions))
        if unknown:
            raise ValueError(f"reserved_concurrency names functions that are not served: {unknown}")
        self._functions: dict[str, _Function] = {}
        for name, folder in functions.items():
            match = _FUNCTION_NAME.match(name)
            if match is None or match["qualifier"] is not None or match["name"] != name:
                raise ValueError(f"not a Lambda function name: {name!r}")
            # Checked here, not at the first invocation, so a typo fails where the endpoint is set up.
            if not (FUNCTIONS / folder / "app.py").is_file():
                raise ValueError(f"no handler at functions/{folder}/app.py for {name!r}")
            limit = limits.get(name)
            if limit is not None and limit < 0:
                raise ValueError(f"reserved concurrency of {name!r} must be >= 0")
            self._functions[name] = _Function(folder=folder, limit=limit)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._background: set[threading.Thread] = set()
        self._background_lock = threading.Lock()
        self._stopping = False
        self.endpoint_url = ""

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> LocalLambdaEndpoint:
        if self._server is not None or self._stopping:
            raise RuntimeError("endpoint already started; create a new one to serve again")
        self._server = _Server(self)
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = self._server.serve_in_background("local-lambda-endpoint")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and wait (up to `timeout` s) for running invocations; Event ones still queued are dropped."""
        server, thread = self._server, self._thread
        if server is None or thread is None or self._stopping:
            return
        self._stopping = True
        for function in self._functions.values():
            with function.slots:
                function.slots.notify_all()
        server.shutdown()
        thread.join(timeout=5)
        # Invocations still running would otherwise go on against whatever the caller tears down next
        # (a test's environment variables, its emulators).
        deadline = time.monotonic() + timeout
        with self._background_lock:
            background = list(self._background)
        for worker in background:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
        for function in self._functions.values():
            with function.slots:
                while function.running and (left := deadline - time.monotonic()) > 0:
                    function.slots.wait(left)
        # Idle keep-alive connections would otherwise keep their handler threads alive.
        server.close_connections()
        server.server_close()

    def __enter__(self) -> LocalLambdaEndpoint:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- what callers and tests read -------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """The variable that sends boto3's `lambda` clients here (and only those: other services keep theirs)."""
        if not self.endpoint_url:
            raise RuntimeError("endpoint not started")
        return {"AWS_ENDPOINT_URL_LAMBDA": self.endpoint_url}

    def invocations(self, name: str) -> int:
        """Invocations of `name` that have finished, whatever their outcome (throttled requests excluded)."""
        function = self._functions[name]
        with function.slots:
            return function.completed

    def throttles(self, name: str) -> int:
        """Requests for `name` answered 429 because its reserved concurrency was in use."""
        function = self._functions[name]
        with function.slots:
            return function.throttled

    # -- request handling (called from server threads) -------------------------------------------

    def _dispatch(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> _Reply:
        path = urlsplit(target).path
        route = _INVOKE_PATH.match(path)
        if method != "POST" or route is None:
            return _service_error(404, "UnknownOperationException", "Unknown operation")
        # botocore percent-encodes the ARN's colons (and the `$` of `$LATEST`) in the path.
        requested = unquote(route["function"])
        match = _FUNCTION_NAME.match(requested)
        name = match["name"] if match is not None else None
        function = self._functions.get(name) if name is not None else None
        if name is None or function is None:
            arn = LocalLambdaContext(function_name=name or requested).invoked_function_arn
            return _service_error(404, "ResourceNotFoundException", f"Function not found: {arn}")
        invocation_type = headers.get("x-amz-invocation-type") or "RequestResponse"
        if invocation_type not in _INVOCATION_TYPES:
            return _service_error(
                400,
                "InvalidParameterValueException",
                f"Unsupported invocation type: {invocation_type}",
            )
        if invocation_type == "DryRun":
            return _Reply(204)
        try:
            # Lambda hands an empty payload to the handler as an empty object.
            event = json.loads(body) if body.strip() else {}
        except ValueError as error:
            return _service_error(
                400, "InvalidRequestContentException", f"Could not parse request body into json: {error}"
            )
        if invocation_type == "Event":
            self._start_background(name, function, event)
            return _Reply(202)
        if not self._take_slot(function):
            return _service_error(
                429,
                "TooManyRequestsException",
                "Rate Exceeded.",
                Reason="ReservedFunctionConcurrentInvocationLimitExceeded",
            )
        try:
            return self._run(name, function, event)
        finally:
            self._release_slot(function)

    def _take_slot(self, function: _Function) -> bool:
        with function.slots:
            if function.limit is not None and function.running >= function.limit:
                function.throttled += 1
                return False
            function.running += 1
            return True

    def _wait_for_slot(self, function: _Function) -> bool:
        with function.slots:
            while function.limit is not None and function.running >= function.limit:
                if self._stopping:
                    return False
                function.slots.wait()
            if self._stopping:
                return False
            function.running += 1
            return True

    def _release_slot(self, function: _Function) -> None:
        with function.slots:
            function.running -= 1
            function.completed += 1
            function.slots.notify_all()

    def _start_background(self, name: str, function: _Function, event: Any) -> None:
        def work() -> None:
            try:
                if not self._wait_for_slot(function):
                    return
                try:
                    # Lambda would log the outcome and retry a failure; here it is only counted.
                    self._run(name, function, event)
                finally:
                    self._release_slot(function)
            finally:
                with self._background_lock:
                    self._background.discard(threading.current_thread())

        worker = threading.Thread(target=work, name=f"local-lambda-event:{name}", daemon=True)
        with self._background_lock:
            self._background.add(worker)
        worker.start()

    def _run(self, name: str, function: _Function, event: Any) -> _Reply:
        context = LocalLambdaContext(function_name=name)
        try:
            handler = load_module(function.folder).lambda_handler
        except Exception as error:  # noqa: BLE001 - any init failure is the function's error, as in Lambda
            return self._function_error(context, "Runtime.ImportModuleError", f"Unable to import module 'app': {error}")
        try:
            result = handler(event, context)
        except Exception as error:  # noqa: BLE001 - the caller gets it as a function error, as in Lambda
            return self._function_error(context, type(error).__name__, str(error))
        try:
            body = json.dumps(result).encode()
        except (TypeError, ValueError) as error:
            return self._function_error(context, "Runtime.MarshalError", f"Unable to marshal response: {error}")
        return _Reply(200, body, (("Content-Type", _JSON), ("X-Amz-Executed-Version", "$LATEST")))

    @staticmethod
    def _function_error(context: LocalLambdaContext, error_type: str, message: str) -> _Reply:
        document = {
            "errorMessage": message,
            "errorType": error_type,
            "requestId": context.aws_request_id,
            "stackTrace": [],
        }
        headers = (("X-Amz-Function-Error", "Unhandled"), ("X-Amz-Executed-Version", "$LATEST"))
        return _json_reply(200, document, headers)


class _Handler(LoopbackRequestHandler):
    server: _Server

    def length_required(self) -> _Reply:
        return _service_error(411, "LengthRequiredException", "Content-Length required")

    def invalid_length(self) -> _Reply:
        return _service_error(400, "InvalidRequestContentException", "Invalid Content-Length")

    def dispatch(self, body: bytes | None) -> _Reply:
        # HTTP header names are case-insensitive; _dispatch looks them up in lower case.
        headers = {name.lower(): value for name, value in self.headers.items()}
        return self.server.endpoint._dispatch(self.command, self.path, headers, body or b"")


class _Server(LoopbackHTTPServer):
    def __init__(self, endpoint: LocalLambdaEndpoint) -> None:
        self.endpoint = endpoint
        super().__init__(_Handler)
