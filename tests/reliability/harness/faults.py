"""Fault injection: recorded (not slept) backoff; Secrets Manager and SQS errors, stale reads and held requests
at botocore's send boundary; and loopback servers that never accept or that reset."""

from __future__ import annotations

import contextlib
import importlib
import json
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import botocore.endpoint
import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse

# --- backoff: every sleep urllib3 (HTTP retries) and botocore (SDK retries) would take, taken instantly --------


class RecordingTime:
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
    """What the retry policies would have slept: urllib3 (IdP, API), botocore (AWS) and the consumers' token
    recovery (re-read jitter, busy rounds)."""

    http: list[float]
    aws: list[float]
    recovery: list[float] = field(default_factory=list)

    def clear(self) -> None:
        self.http.clear()
        self.aws.clear()
        self.recovery.clear()


def record_backoff(monkeypatch: pytest.MonkeyPatch) -> Backoff:
    """urllib3's Retry and botocore's retry handler each call their module's `time.sleep`; only those two
    modules see the recorder. The recovery's sleep is injected where a container is built."""
    http, aws = RecordingTime(), RecordingTime()
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


# Long enough that no loaded machine reaches it; a test that does has hung.
GATE_LIMIT_SECONDS = 300.0


@dataclass
class _Stale:
    target: str
    remaining: int


@dataclass
class Gate:
    """Holds the first matching request at the send boundary until the test opens it: the test knows the
    request is in flight (`reached`) and decides when it goes on, whatever the machine's speed."""

    operation: str
    target: str | None
    reached: threading.Event = field(default_factory=threading.Event)
    opened: threading.Event = field(default_factory=threading.Event)
    used: bool = False

    def wait_reached(self) -> None:
        if not self.reached.wait(GATE_LIMIT_SECONDS):
            raise TimeoutError(f"no {self.operation} request reached the gate")

    def open(self) -> None:
        self.opened.set()

    def hold(self) -> None:
        """Called by the request being held."""
        self.reached.set()
        if not self.opened.wait(GATE_LIMIT_SECONDS):
            raise TimeoutError(f"the gate for {self.operation} was never opened")


@dataclass
class AwsFaults:
    """Answers chosen requests of one boto3 client with an AWS error before they leave the process, serves
    chosen reads from the version a write just replaced, and holds a chosen request until the test opens its
    gate.

    Everything not matched goes on to moto. `attempts` counts every request the client made (so SDK retries
    are visible); `injected` counts the error answers given here, `stale` the reads turned stale.
    """

    faults: list[_Fault] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    stale: Counter[str] = field(default_factory=Counter)
    _stale_reads: list[_Stale] = field(default_factory=list)
    _gates: list[Gate] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self, client: Any) -> AwsFaults:
        service = client.meta.service_model.service_id.hyphenize()
        client.meta.events.register(f"before-send.{service}", self.before_send)
        return self

    def fail(self, operation: str, code: str, *, times: int = 1, status: int = 400, target: str | None = None) -> None:
        """The next `times` requests of `operation` (on secret/queue `target`, if given) get `code`."""
        with self._lock:
            self.faults.append(_Fault(operation, code, status, times, target))

    def serve_previous(self, target: str, *, times: int = 1) -> None:
        """The next `times` GetSecretValue requests for `target` read its AWSPREVIOUS version: what a lagging
        replica or cache serves right after a write (the value the write replaced, labelled as current)."""
        with self._lock:
            self._stale_reads.append(_Stale(target, times))

    def gate(self, operation: str, *, target: str | None = None) -> Gate:
        """Hold the next request of `operation` (on `target`, if given) until the returned gate is opened; the
        faults above apply to it once it goes on."""
        gate = Gate(operation, target)
        with self._lock:
            self._gates.append(gate)
        return gate

    def before_send(self, request: AWSPreparedRequest, event_name: str, **_: Any) -> AWSResponse | None:
        operation = event_name.rsplit(".", 1)[-1]
        target = _target_of(request)
        with self._lock:
            self.attempts[operation] += 1
            gate = next(
                (g for g in self._gates if not g.used and g.operation == operation and g.target in (None, target)),
                None,
            )
            if gate is not None:
                gate.used = True
        if gate is not None:
            gate.hold()  # outside the lock: the other threads' requests must not wait for this one
        with self._lock:
            for fault in self.faults:
                if fault.operation == operation and fault.remaining > 0 and fault.target in (None, target):
                    fault.remaining -= 1
                    self.injected[operation] += 1
                    return error_response(request, fault.code, fault.status)
            if operation == "GetSecretValue":
                for stale in self._stale_reads:
                    if stale.remaining > 0 and stale.target == target:
                        stale.remaining -= 1
                        self.stale[operation] += 1
                        _ask_for_previous(request)
                        break
        return None


def _ask_for_previous(request: AWSPreparedRequest) -> None:
    # moto does not check signatures, so the signed body may change on its way out.
    body = json.loads(request.body or b"{}")
    body["VersionStage"] = "AWSPREVIOUS"
    request.body = json.dumps(body).encode()
    request.headers["Content-Length"] = str(len(request.body))


def _target_of(request: AWSPreparedRequest) -> str | None:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return None
    return (body.get("SecretId") or body.get("QueueUrl")) if isinstance(body, dict) else None


def error_response(request: AWSPreparedRequest, code: str, status: int = 400) -> AWSResponse:
    body = json.dumps({"__type": code, "message": f"injected {code}"}).encode()
    headers = {"x-amzn-RequestId": "injected", "Content-Type": "application/x-amz-json-1.1"}
    return AWSResponse(request.url, status, headers, _Body(body))


# --- loopback servers that misbehave at the TCP level --------------------------------------------------------


def closed_port() -> int:
    """A loopback port nobody listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def blackhole_port() -> Iterator[int]:
    """A loopback port whose accept queue is full: the kernel drops new SYNs, so connecting times out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    # A blocking connect returns once the handshake is done, so the queue is full before the port is used
    # (no sleep racing the kernel); the others make sure, whatever the kernel counts as full.
    first = socket.create_connection(("127.0.0.1", port), timeout=30)
    fillers = [first]
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for sock in [*fillers, listener]:
            sock.close()


@contextlib.contextmanager
def resetting_port() -> Iterator[int]:
    """A loopback server that accepts, reads the request, and answers with a TCP reset (SO_LINGER 0)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return  # the listener was closed: the test is over
            if stop.is_set():
                connection.close()
                return
            # Reading first means the client's request was sent whole; the reset answers it.
            connection.settimeout(30)
            with contextlib.suppress(OSError):
                connection.recv(65536)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.close()

    thread = threading.Thread(target=serve, name="resetting-server", daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        # Wakes the blocking accept(), which then sees `stop`.
        with contextlib.suppress(OSError), socket.create_connection(listener.getsockname(), timeout=30):
            pass
        thread.join(timeout=30)
        listener.close()
