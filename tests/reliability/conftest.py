"""Fault injection for the reliability suite: recorded (not slept) backoff, Secrets Manager and SQS errors
answered at botocore's send boundary, loopback servers that never accept or that reset, and a reader of
what the handlers logged."""

from __future__ import annotations

import contextlib
import importlib
import json
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import botocore.endpoint
import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse

from tests.conftest import LambdaOutput

# --- backoff: every sleep urllib3 (HTTP retries) and botocore (SDK retries) would take, taken instantly --------


class _RecordingTime:
    """Stands in for the `time` module inside one library: `sleep` is recorded, everything else is real."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@dataclass
class Backoff:
    http: list[float]
    aws: list[float]


@pytest.fixture
def backoff(monkeypatch: pytest.MonkeyPatch) -> Backoff:
    """The production retry policies, unchanged, minus the waiting: what they would sleep is recorded.

    urllib3's Retry (IdP and API transport) and botocore's retry handler each call their module's
    `time.sleep`; only those two modules see the recorder.
    """
    http, aws = _RecordingTime(), _RecordingTime()
    monkeypatch.setattr(importlib.import_module("urllib3.util.retry"), "time", http)
    monkeypatch.setattr(botocore.endpoint, "time", aws)
    return Backoff(http=http.sleeps, aws=aws.sleeps)


# --- AWS faults at botocore's send boundary ------------------------------------------------------------------


class _Body:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


@dataclass
class _Fault:
    operation: str
    code: str
    status: int
    remaining: int
    target: str | None


@dataclass
class AwsFaults:
    """Answers chosen requests of one boto3 client with an AWS error before they leave the process.

    Everything not matched goes on to moto. `attempts` counts every request the client made (so SDK retries
    are visible); `injected` counts the answers given here.
    """

    faults: list[_Fault] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self, client: Any) -> AwsFaults:
        service = client.meta.service_model.service_id.hyphenize()
        client.meta.events.register(f"before-send.{service}", self._before_send)
        return self

    def fail(self, operation: str, code: str, *, times: int = 1, status: int = 400, target: str | None = None) -> None:
        """The next `times` requests of `operation` (on secret/queue `target`, if given) get `code`."""
        with self._lock:
            self.faults.append(_Fault(operation, code, status, times, target))

    def _before_send(self, request: AWSPreparedRequest, event_name: str, **_: Any) -> AWSResponse | None:
        operation = event_name.rsplit(".", 1)[-1]
        target = _target_of(request)
        with self._lock:
            self.attempts[operation] += 1
            for fault in self.faults:
                if fault.operation == operation and fault.remaining > 0 and fault.target in (None, target):
                    fault.remaining -= 1
                    self.injected[operation] += 1
                    return _error_response(request, fault)
        return None


def _target_of(request: AWSPreparedRequest) -> str | None:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return None
    return (body.get("SecretId") or body.get("QueueUrl")) if isinstance(body, dict) else None


def _error_response(request: AWSPreparedRequest, fault: _Fault) -> AWSResponse:
    body = json.dumps({"__type": fault.code, "message": f"injected {fault.code}"}).encode()
    headers = {"x-amzn-RequestId": "injected", "Content-Type": "application/x-amz-json-1.1"}
    return AWSResponse(request.url, fault.status, headers, _Body(body))


@pytest.fixture
def secrets_faults(aws: Any) -> AwsFaults:
    """Faults on the container's Secrets Manager client: the one the refresher and the consumers use."""
    from usage_engine.aws_clients import secrets_manager_client

    return AwsFaults().install(secrets_manager_client())


@pytest.fixture
def sqs_faults(aws: Any) -> AwsFaults:
    """Faults on the container's SQS client (the meter_events dead-letter queue sender)."""
    from usage_engine.aws_clients import sqs_client

    return AwsFaults().install(sqs_client())


# --- loopback servers that misbehave at the TCP level --------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def blackhole_port() -> Iterator[int]:
    """A loopback port whose accept queue is full: the kernel drops new SYNs, so connecting times out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.05)
    yield port
    for sock in [*fillers, listener]:
        sock.close()


@pytest.fixture
def resetting_port() -> Iterator[int]:
    """A loopback server that accepts, reads the request, and answers with a TCP reset (SO_LINGER 0)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            connection.settimeout(1)
            with contextlib.suppress(OSError):
                connection.recv(65536)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.close()

    thread = threading.Thread(target=serve, name="resetting-server", daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join(timeout=5)
    listener.close()


# --- what the handlers logged and measured --------------------------------------------------------------------


@pytest.fixture
def function_output(lambda_stdout: Callable[[], LambdaOutput]) -> Callable[[], LambdaOutput]:
    """Log lines and EMF metric documents of the handlers, leak-checked (tests/conftest.py's lambda_stdout)."""
    return lambda_stdout
