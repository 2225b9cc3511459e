"""Discrete-event simulation of the bundle on a virtual clock: fleets, storms and whole days, without sleeping.

The REAL layer code runs in it: `TokenProvider`, `TokenStore`/`SecretsManagerSecret`, `decide()` through
`TokenRefresher.run`, `ClientCredentialsExchange` (with the layer's own urllib3 `Retry` policy, Retry-After
cap included), `UsageEngineClient` (401 recovery, busy back-off with jitter) and `LambdaRefreshRequester`.
Fakes sit only at the AWS and HTTP boundary, where they count calls and model latency, quotas, throttling
and faults:

* `SecretsManagerFake`: GetSecretValue/PutSecretValue with the account quotas (10,000/s and 50/s), throttling
  answered as AWS does, and botocore's "standard" retry mode (attempts from the layer's own `Config`,
  jittered exponential backoff, per-client retry quota) modelled in its clients;
* `LambdaFake`: the refresher function with reserved concurrency 1: synchronous invokes (throttled with
  TooManyRequestsException, botocore retries, the client's read timeout) and the schedule's asynchronous
  ones (throttled events re-queued, failed runs retried about 1 and 2 minutes later, events older than the
  maximum event age dropped);
* `UsageEngineFake`: the IdP's token endpoint (the emulator's rate limiter, 10/s burst 5 and 1,000 per 5
  minutes; outages as connect timeouts, refused connections or (flapping) 5xx) and the API (401 for an
  unknown, expired or revoked token);
* `FakeHttpSession`: what `requests` + urllib3 do with a response or an error, driven by the session's real
  `Retry` object (`is_retry`, `increment`, `get_backoff_time`, `get_retry_after`).

How time works. Every event runs at `Simulation.now`. Code inside an event reads `Simulation.clock()`,
which is `now` plus the time the event has spent so far (latencies, backoffs: `elapse()`); that time is
"lazy" until the event touches shared state (a secret, the refresher's concurrency slot, the IdP's rate
limiter): then `sync()` moves the event to its own time first, running every earlier event before it. An
event that has to wait while others run is suspended on its own thread (the synchronous layer code cannot
yield otherwise); exactly one thread runs at a time, so a run is deterministic for a seed. Events that
never touch shared state after a latency (a warm invocation: cached token, one API call) never suspend.
The API answer depends only on the token and the time (revocations are known in advance), so API calls
need no sync either.
"""

from __future__ import annotations

import contextlib
import heapq
import http
import inspect
import io
import itertools
import json
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import requests
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.exceptions import ReadTimeoutError as BotocoreReadTimeoutError
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    ResponseError,
)
from urllib3.response import HTTPResponse
from urllib3.util.retry import Retry

from local.usage_engine_emulator import _RateLimiter
from usage_engine import (
    LambdaRefreshRequester,
    RefresherSettings,
    RefreshRequest,
    TokenProvider,
    TokenRefresher,
    TokenStore,
    UsageEngineClient,
    UsageEngineError,
)
from usage_engine.api_client import api_session
from usage_engine.aws_clients import LAMBDA_CONFIG, SECRETS_MANAGER_CONFIG
from usage_engine.idp import ClientCredentialsExchange, token_session
from usage_engine.metering import METERS_PATH
from usage_engine.refresher import CredentialsSource
from usage_engine.secrets_manager import SecretsManagerSecret
from usage_engine.settings import (
    DEFAULT_API_URL,
    DEFAULT_AUDIENCE,
    DEFAULT_REFRESH_MARGIN_SECONDS,
    DEFAULT_REJECTED_TOKEN_COOLDOWN_SECONDS,
    DEFAULT_TOKEN_EXPIRY_SKEW_SECONDS,
    DEFAULT_TOKEN_URL,
)

# A fixed, whole-second epoch: reports count calls per wall-clock second from here.
EPOCH = 1_800_000_000.0
CREDENTIALS_SECRET = "usage-engine/credentials"
TOKEN_SECRET = "usage-engine/token"
REFRESHER = "token-refresher"
CLIENT_ID = "sim-client"
# Not a secret anyone uses: the simulated IdP only compares it.
CLIENT_SECRET = "sim-client-secret"
# AWS quotas (per account and Region): GetSecretValue (with DescribeSecret) 10,000/s, PutSecretValue 50/s.
GET_SECRET_VALUE_QUOTA = 10_000
PUT_SECRET_VALUE_QUOTA = 50
# The refresher as template.yaml deploys it.
RESERVED_CONCURRENCY = 1
REFRESHER_TIMEOUT_SECONDS = 120.0
ASYNC_MAX_RETRY_ATTEMPTS = 2
ASYNC_MAX_EVENT_AGE_SECONDS = 240.0
SCHEDULE_INTERVAL_SECONDS = 300.0
_THREAD_STACK_BYTES = 1 << 20


# --------------------------------------------------------------------------------------------------------------
# The engine


class SimulationClosed(BaseException):
    """Unwinds an event suspended when the simulation closes (a BaseException: the layer must not catch it)."""


class _Wait:
    """One suspended thread's ticket; a ticket woken once (result or timeout) ignores later wake-ups."""

    __slots__ = ("active", "worker")

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        self.active = True


class _Worker:
    """A thread that can run the event loop. Its lock is held while it runs; acquiring it again waits."""

    __slots__ = ("lock",)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()


_Entry = tuple[float, int, Callable[[], None] | None, _Wait | None]


class Future:
    """The result of work spawned on the simulation (for example one refresher run)."""

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self._waits: list[_Wait] = []


class Simulation:
    """Events on a virtual clock. Use as a context manager: it seeds `random` and restores it afterwards
    (the layer's jitter and urllib3's backoff use the module-level generator)."""

    def __init__(self, *, seed: int = 1, start: float = EPOCH) -> None:
        self.seed = seed
        self.start = start
        self.now = start
        self.rng = random.Random(seed)
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._pending = 0.0
        self._until = start
        self._idle: list[_Worker] = []
        self._workers: list[_Worker] = []
        self._threads: list[threading.Thread] = []
        self._local = threading.local()
        self._done = threading.Lock()
        self._done.acquire()
        self._error: BaseException | None = None
        self._closed = False
        self._saved_random: Any = None
        self.events = 0
        self.suspensions = 0
        self.max_threads = 0

    # -- time as the code under test sees it

    def clock(self) -> float:
        """The running event's own time: `now` plus what it has spent since it last synced."""
        return self.now + self._pending

    def elapse(self, seconds: float) -> None:
        """Spend time in the running event (a latency, a backoff); takes effect lazily (see `sync`)."""
        if seconds > 0:
            self._pending += seconds

    def sync(self) -> None:
        """Before touching shared state: let every event due before this event's own time run first."""
        pending = self._pending
        if pending > 0:
            self._pending = 0.0
            self._advance(self.now + pending)

    def sleep(self, seconds: float) -> None:
        self.elapse(seconds)
        self.sync()

    # -- scheduling

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), action, None))

    def after(self, seconds: float, action: Callable[[], None]) -> None:
        self.at(self.clock() + seconds, action)

    def spawn(self, work: Callable[[], Any]) -> Future:
        """Run `work` as its own event at the current event's time; the result lands in the Future."""
        future = Future()

        def run() -> None:
            value = work()
            self.sync()
            future.done = True
            future.value = value
            for wait in future._waits:
                if wait.active:
                    heapq.heappush(self._heap, (self.now, next(self._seq), None, wait))

        self.at(self.clock(), run)
        return future

    def wait(self, future: Future, timeout: float) -> bool:
        """Suspend the running event until `future` is done (True) or `timeout` seconds pass (False)."""
        self.sync()
        if future.done:
            return True
        wait = _Wait(self._local.worker)
        future._waits.append(wait)
        heapq.heappush(self._heap, (self.now + timeout, next(self._seq), None, wait))
        self._suspend(wait)
        return future.done

    # -- running

    def run(self, until: float = math.inf) -> None:
        """Run events up to `until` (absolute time); with the default, until none is left."""
        if self._closed:
            raise RuntimeError("simulation closed")
        self._until = until
        self._hand_over()
        self._done.acquire()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def run_for(self, seconds: float) -> None:
        self.run(self.now + seconds)

    def close(self) -> None:
        """Stop: threads still suspended in an event unwind (SimulationClosed), idle ones exit."""
        if self._closed:
            return
        self._closed = True
        suspended = [wait for _, _, _, wait in self._heap if wait is not None and wait.active]
        self._heap.clear()
        for wait in suspended:
            wait.active = False
            wait.worker.lock.release()
        for worker in self._idle:
            worker.lock.release()
        self._idle.clear()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> Simulation:
        self._saved_random = random.getstate()
        random.seed(self.seed)
        return self

    def __exit__(self, *_: object) -> None:
        try:
            self.close()
        finally:
            random.setstate(self._saved_random)

    # -- internals: one thread at a time holds the "baton" and runs the loop

    def _advance(self, when: float) -> None:
        heap = self._heap
        if not heap or heap[0][0] >= when:
            # Nothing else happens before `when`: no need to give way.
            self.now = when
            return
        wait = _Wait(self._local.worker)
        heapq.heappush(heap, (when, next(self._seq), None, wait))
        self._suspend(wait)

    def _suspend(self, wait: _Wait) -> None:
        self.suspensions += 1
        self._hand_over()
        wait.worker.lock.acquire()
        if self._closed:
            raise SimulationClosed

    def _hand_over(self) -> None:
        """Let another (idle or new) thread run the loop."""
        if self._idle:
            worker = self._idle.pop()
        else:
            worker = _Worker()
            previous = threading.stack_size(_THREAD_STACK_BYTES)
            try:
                thread = threading.Thread(target=self._work, args=(worker,), name="simulation", daemon=True)
                thread.start()
            finally:
                threading.stack_size(previous)
            self._workers.append(worker)
            self._threads.append(thread)
            self.max_threads = len(self._threads)
        worker.lock.release()

    def _work(self, worker: _Worker) -> None:
        self._local.worker = worker
        while True:
            worker.lock.acquire()
            if self._closed:
                return
            self._loop(worker)
            if self._closed:
                return

    def _loop(self, me: _Worker) -> None:
        heap = self._heap
        while True:
            if not heap or heap[0][0] > self._until:
                if self._until != math.inf and self._until > self.now:
                    self.now = self._until
                self._idle.append(me)
                self._done.release()
                return
            when, _, action, wait = heapq.heappop(heap)
            if when > self.now:
                self.now = when
            if wait is not None:
                if not wait.active:
                    continue
                wait.active = False
                # That thread continues its event (and then this loop); this one goes idle.
                self._idle.append(me)
                wait.worker.lock.release()
                return
            self.events += 1
            self._pending = 0.0
            try:
                action()
            except SimulationClosed:
                return
            except BaseException as error:  # noqa: BLE001 - a bug in a scenario: stop, re-raise in run()
                self._error = error
                heap.clear()
                self._idle.append(me)
                self._done.release()
                return
            self._pending = 0.0


class Rate:
    """Calls per wall-clock second of simulated time."""

    def __init__(self) -> None:
        self.per_second: Counter[int] = Counter()
        self.total = 0

    def add(self, when: float, count: int = 1) -> None:
        self.per_second[int(when)] += count
        self.total += count

    def peak(self) -> int:
        return max(self.per_second.values(), default=0)

    def peak_second(self) -> float | None:
        if not self.per_second:
            return None
        return float(max(self.per_second.items(), key=lambda item: (item[1], -item[0]))[0])

    def between(self, start: float, end: float) -> int:
        return sum(count for second, count in self.per_second.items() if start <= second < end)


def _uniform(rng: random.Random, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return low + (high - low) * rng.random()


@dataclass(frozen=True)
class Latencies:
    """Service latencies in seconds, drawn uniformly from each range."""

    secrets_get: tuple[float, float] = (0.008, 0.030)
    secrets_put: tuple[float, float] = (0.030, 0.080)
    lambda_invoke: tuple[float, float] = (0.010, 0.030)
    idp: tuple[float, float] = (0.080, 0.300)
    api: tuple[float, float] = (0.015, 0.060)
    # A consumer container's init (runtime start, imports) before its first invocation runs.
    cold_start: tuple[float, float] = (0.25, 0.45)


def _client_error(code: str, operation: str, message: str = "", status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, operation
    )


def _total_attempts(config: Config) -> int:
    """Requests per call under a botocore Config: `total_max_attempts`, or `max_attempts` retries + 1."""
    retries = dict(getattr(config, "retries", None) or {})
    if "total_max_attempts" in retries:
        return int(retries["total_max_attempts"])
    return int(retries.get("max_attempts", 2)) + 1


class _BotocoreRetries:
    """botocore's standard retry mode for throttling: rand(0,1) x min(2^(n-1), 20) s, a 500-unit retry quota
    per client (5 per retry, refunded on success)."""

    MAX_BACKOFF = 20.0
    QUOTA = 500
    RETRY_COST = 5

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts
        self.capacity = self.QUOTA

    def may_retry(self, attempt: int) -> bool:
        if attempt >= self.attempts or self.capacity < self.RETRY_COST:
            return False
        self.capacity -= self.RETRY_COST
        return True

    def succeeded(self, attempt: int) -> None:
        refund = self.RETRY_COST if attempt > 1 else 1
        self.capacity = min(self.QUOTA, self.capacity + refund)

    def delay(self, rng: random.Random, attempt: int) -> float:
        return rng.random() * min(2.0 ** (attempt - 1), self.MAX_BACKOFF)


# --------------------------------------------------------------------------------------------------------------
# AWS Secrets Manager


class SecretsManagerFake:
    """The account's Secrets Manager: versions, quotas, latencies; counts every request that reaches it."""

    def __init__(
        self,
        sim: Simulation,
        *,
        get_quota: int | None = GET_SECRET_VALUE_QUOTA,
        put_quota: int | None = PUT_SECRET_VALUE_QUOTA,
        latencies: Latencies | None = None,
    ) -> None:
        self.sim = sim
        self.get_quota = get_quota
        self.put_quota = put_quota
        self.latencies = latencies or Latencies()
        self._versions: dict[str, list[str]] = {}
        self.gets = Rate()
        self.puts = Rate()
        self.throttled: Counter[str] = Counter()
        self.failed_calls: Counter[str] = Counter()
        self.gets_by: Counter[str] = Counter()
        self.gets_by_rate: dict[str, Rate] = {}

    def create(self, name: str, value: str | None = None) -> None:
        self._versions[name] = [] if value is None else [value]

    def current(self, name: str) -> str | None:
        versions = self._versions.get(name) or [None]
        return versions[-1]

    def versions(self, name: str) -> int:
        return len(self._versions.get(name, []))

    def client(self, role: str, config: Config = SECRETS_MANAGER_CONFIG) -> SecretsManagerClientFake:
        return SecretsManagerClientFake(self, role, _BotocoreRetries(_total_attempts(config)))

    def _get(self, name: str, role: str) -> dict[str, Any]:
        now = self.sim.now
        self.gets.add(now)
        self.gets_by[role] += 1
        rate = self.gets_by_rate.get(role)
        if rate is None:
            rate = self.gets_by_rate[role] = Rate()
        rate.add(now)
        if self.get_quota is not None and self.gets.per_second[int(now)] > self.get_quota:
            self.throttled["GetSecretValue"] += 1
            raise _client_error("ThrottlingException", "GetSecretValue", "Rate exceeded", 400)
        value = self.current(name) if name in self._versions else None
        if value is None:
            raise _client_error("ResourceNotFoundException", "GetSecretValue", "no current version", 400)
        return {"Name": name, "SecretString": value, "VersionId": f"v{len(self._versions[name])}"}

    def _put(self, name: str, value: str) -> dict[str, Any]:
        now = self.sim.now
        self.puts.add(now)
        if self.put_quota is not None and self.puts.per_second[int(now)] > self.put_quota:
            self.throttled["PutSecretValue"] += 1
            raise _client_error("ThrottlingException", "PutSecretValue", "Rate exceeded", 400)
        if name not in self._versions:
            raise _client_error("ResourceNotFoundException", "PutSecretValue", "no such secret", 400)
        self._versions[name].append(value)
        return {"Name": name, "VersionId": f"v{len(self._versions[name])}"}


class SecretsManagerClientFake:
    """Stands in for `boto3.client("secretsmanager", config=SECRETS_MANAGER_CONFIG)` of one container."""

    def __init__(self, service: SecretsManagerFake, role: str, retries: _BotocoreRetries) -> None:
        self._service = service
        self._role = role
        self._retries = retries
        self.calls = 0

    def get_secret_value(self, *, SecretId: str, **_: Any) -> dict[str, Any]:  # noqa: N803 - boto3's names
        return self._call(
            "GetSecretValue", lambda: self._service._get(SecretId, self._role), self._service.latencies.secrets_get
        )

    def put_secret_value(self, *, SecretId: str, SecretString: str, **_: Any) -> dict[str, Any]:  # noqa: N803
        return self._call(
            "PutSecretValue", lambda: self._service._put(SecretId, SecretString), self._service.latencies.secrets_put
        )

    def _call(self, operation: str, attempt_call: Callable[[], dict[str, Any]], latency: tuple[float, float]) -> Any:
        sim = self._service.sim
        attempt = 1
        while True:
            sim.sync()
            self.calls += 1
            try:
                result = attempt_call()
            except ClientError as error:
                sim.elapse(_uniform(sim.rng, latency))
                code = error.response["Error"]["Code"]
                if code != "ThrottlingException" or not self._retries.may_retry(attempt):
                    self._service.failed_calls[f"{operation}:{code}"] += 1
                    raise
                sim.elapse(self._retries.delay(sim.rng, attempt))
                attempt += 1
                continue
            sim.elapse(_uniform(sim.rng, latency))
            self._retries.succeeded(attempt)
            return result


# --------------------------------------------------------------------------------------------------------------
# HTTP: the IdP and the API


@dataclass(frozen=True)
class HttpAnswer:
    """What one HTTP attempt got: a response, or an `error` ("connect-timeout", "refused", "read-timeout")."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


class _Raw:
    """The bits of urllib3's response that the layer reads (`retries` for the attempt count)."""

    __slots__ = ("retries",)

    def __init__(self, retries: Retry) -> None:
        self.retries = retries


class Transport:
    def handle(
        self, method: str, url: str, headers: Mapping[str, str], data: Any, timeout: tuple[float, float]
    ) -> HttpAnswer:
        raise NotImplementedError


class FakeHttpSession:
    """A `requests.Session` whose network is a simulated `Transport`, retried by the session's real `Retry`."""

    def __init__(self, sim: Simulation, transport: Transport, retry: Retry, *, sync_before_send: bool) -> None:
        self._sim = sim
        self._transport = transport
        self._retry = retry
        self._sync = sync_before_send
        self.last_authorization: str | None = None
        self._ok_cache: dict[bytes, requests.Response] = {}

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", url, **kwargs)

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: Any = None,
        timeout: tuple[float, float] = (3.05, 10.0),
        **_: Any,
    ) -> requests.Response:
        sim = self._sim
        headers = headers or {}
        self.last_authorization = headers.get("Authorization")
        retry = self._retry
        while True:
            if self._sync:
                sim.sync()
            answer = self._transport.handle(method, url, headers, data, timeout)
            sim.elapse(answer.seconds)
            if answer.error is not None:
                retry = self._after_error(retry, method, url, answer.error)
                sim.elapse(retry.get_backoff_time())
                continue
            if answer.status >= 300 and retry.is_retry(method, answer.status, "Retry-After" in answer.headers):
                raw = HTTPResponse(body=answer.body, headers=dict(answer.headers), status=answer.status)
                try:
                    retry = retry.increment(method, url, response=raw)
                except MaxRetryError:
                    return self._response(answer, retry, url)
                retry_after = retry.get_retry_after(raw) if retry.respect_retry_after_header else None
                sim.elapse(retry_after if retry_after is not None else retry.get_backoff_time())
                continue
            return self._response(answer, retry, url)

    @staticmethod
    def _after_error(retry: Retry, method: str, url: str, kind: str) -> Retry:
        """urllib3's bookkeeping for a failed attempt, and requests' exception when it gives up."""
        error: Exception
        if kind == "connect-timeout":
            error = ConnectTimeoutError(None, f"Connection to {url} timed out")
        elif kind == "refused":
            error = NewConnectionError(cast(Any, None), "Failed to establish a new connection: [Errno 111]")
        elif kind == "read-timeout":
            error = ReadTimeoutError(cast(Any, None), url, "Read timed out.")
        else:
            error = ProtocolError("Connection aborted.", ConnectionResetError(104, "Connection reset by peer"))
        try:
            return retry.increment(method, url, error=error)
        except MaxRetryError as exhausted:
            reason = exhausted.reason
            if isinstance(reason, ConnectTimeoutError) and not isinstance(reason, NewConnectionError):
                raise requests.exceptions.ConnectTimeout(exhausted) from None
            if isinstance(reason, ResponseError):
                raise requests.exceptions.RetryError(exhausted) from None
            raise requests.exceptions.ConnectionError(exhausted) from None
        except ReadTimeoutError as timeout:
            raise requests.exceptions.ReadTimeout(timeout) from None
        except ProtocolError as reset:
            raise requests.exceptions.ConnectionError(reset) from None

    def _response(self, answer: HttpAnswer, retry: Retry, url: str) -> requests.Response:
        if answer.status == 200 and not retry.history:
            # Warm-path answers are identical: build each distinct one once.
            cached = self._ok_cache.get(answer.body)
            if cached is not None:
                return cached
        response = requests.Response()
        response.status_code = answer.status
        response._content = answer.body
        response._content_consumed = True
        response.headers = CaseInsensitiveDict(answer.headers)
        response.reason = http.HTTPStatus(answer.status).phrase
        response.url = url
        response.encoding = "utf-8"
        response.raw = _Raw(retry)
        if answer.status == 200 and not retry.history:
            self._ok_cache[answer.body] = response
        return response


@dataclass(frozen=True)
class Outage:
    """The IdP failing from `start` to `end` (absolute times).

    mode: "connect-timeout" (unreachable: every attempt waits the connect timeout), "refused", or "status"
    (answers `status`, with `Retry-After` if set). `down_seconds`/`up_seconds` make it flap: down, then up,
    then down again... from `start`.
    """

    start: float
    end: float
    mode: str = "status"
    status: int = 503
    retry_after: int | None = None
    down_seconds: float | None = None
    up_seconds: float | None = None
    label: str = ""

    def failing(self, now: float) -> bool:
        if not self.start <= now < self.end:
            return False
        if self.down_seconds is None or self.up_seconds is None:
            return True
        return (now - self.start) % (self.down_seconds + self.up_seconds) < self.down_seconds

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class IssuedInfo:
    issued_at: float
    expires_at: int


class UsageEngineFake:
    """The Usage Engine's token endpoint and API, as the emulator behaves, on the simulation's clock."""

    OK_BODY = b'{"meters":[]}'

    def __init__(
        self,
        sim: Simulation,
        *,
        expires_in: int = 3600,
        rate_limit: bool = True,
        latencies: Latencies | None = None,
        revocations: tuple[float, ...] = (),
        outages: tuple[Outage, ...] = (),
    ) -> None:
        self.sim = sim
        self.expires_in = expires_in
        self.latencies = latencies or Latencies()
        self.revocations = tuple(sorted(revocations))
        self.outages = tuple(outages)
        self._limiter = _RateLimiter(sim.clock) if rate_limit else None
        self.issued: dict[str, IssuedInfo] = {}
        self.idp_requests = Rate()
        self.idp_outcomes: Counter[str] = Counter()
        self.idp_issued = Rate()
        self.api_requests = Rate()
        self.api_statuses: Counter[int] = Counter()
        self._counter = itertools.count(1)
        self.idp_transport = _IdpTransport(self)
        self.api_transport = _ApiTransport(self)

    def valid_until(self, token: str, *, skew: float = 0.0) -> float:
        """Until when the API accepts `token`: its expiry (less `skew`), or the first revocation after its issue."""
        info = self.issued.get(token)
        if info is None:
            return -math.inf
        until = float(info.expires_at) - skew
        for revoked_at in self.revocations:
            if revoked_at > info.issued_at:
                return min(until, revoked_at)
        return until

    def accepts(self, token: str, now: float) -> bool:
        return now < self.valid_until(token)

    def outage_at(self, now: float) -> Outage | None:
        for outage in self.outages:
            if outage.failing(now):
                return outage
        return None


class _IdpTransport(Transport):
    def __init__(self, usage_engine: UsageEngineFake) -> None:
        self.ue = usage_engine

    def handle(
        self, method: str, url: str, headers: Mapping[str, str], data: Any, timeout: tuple[float, float]
    ) -> HttpAnswer:
        ue = self.ue
        sim = ue.sim
        now = sim.now
        ue.idp_requests.add(now)
        latency = _uniform(sim.rng, ue.latencies.idp)
        outage = ue.outage_at(now)
        if outage is not None:
            if outage.mode == "connect-timeout":
                ue.idp_outcomes["connect-timeout"] += 1
                return HttpAnswer(error="connect-timeout", seconds=timeout[0])
            if outage.mode == "refused":
                ue.idp_outcomes["refused"] += 1
                return HttpAnswer(error="refused", seconds=0.002)
            ue.idp_outcomes[str(outage.status)] += 1
            extra = {} if outage.retry_after is None else {"Retry-After": str(outage.retry_after)}
            return HttpAnswer(outage.status, b'{"error":"temporarily_unavailable"}', extra, seconds=latency)
        form = data if isinstance(data, Mapping) else {}
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            ue.idp_outcomes["401"] += 1
            return HttpAnswer(401, b'{"error":"access_denied"}', seconds=latency)
        if ue._limiter is not None:
            retry_after = ue._limiter.admit(CLIENT_ID)
            if retry_after is not None:
                ue.idp_outcomes["429"] += 1
                return HttpAnswer(
                    429, b'{"error":"too_many_requests"}', {"Retry-After": str(retry_after)}, seconds=latency
                )
        number = next(ue._counter)
        token = f"sim.{number}.{sim.rng.getrandbits(64):016x}"
        ue.issued[token] = IssuedInfo(issued_at=now, expires_at=int(now) + ue.expires_in)
        ue.idp_outcomes["200"] += 1
        ue.idp_issued.add(now)
        body = json.dumps(
            {"access_token": token, "token_type": "Bearer", "expires_in": ue.expires_in, "scope": "read:meters"}
        ).encode()
        return HttpAnswer(200, body, seconds=latency)


class _ApiTransport(Transport):
    def __init__(self, usage_engine: UsageEngineFake) -> None:
        self.ue = usage_engine

    def handle(
        self, method: str, url: str, headers: Mapping[str, str], data: Any, timeout: tuple[float, float]
    ) -> HttpAnswer:
        ue = self.ue
        sim = ue.sim
        now = sim.clock()
        ue.api_requests.add(now)
        low, high = ue.latencies.api
        latency = low + (high - low) * sim.rng.random()
        authorization = headers.get("Authorization", "")
        if authorization.startswith("Bearer ") and ue.accepts(authorization[7:], now):
            ue.api_statuses[200] += 1
            return HttpAnswer(200, UsageEngineFake.OK_BODY, seconds=latency)
        ue.api_statuses[401] += 1
        return HttpAnswer(401, b'{"error":"invalid_token"}', seconds=latency)


# --------------------------------------------------------------------------------------------------------------
# AWS Lambda: the refresher function


class LambdaFake:
    """The TokenRefresher function: reserved concurrency, sync and async invocations, Lambda's async retries.

    A run executes the real `TokenRefresher.run` and answers what the handler answers: the outcome's
    `response()`, or a function error named after the exception (the handler re-raises).
    """

    def __init__(
        self,
        sim: Simulation,
        refresher: TokenRefresher,
        *,
        reserved_concurrency: int = RESERVED_CONCURRENCY,
        latencies: Latencies | None = None,
    ) -> None:
        self.sim = sim
        self.refresher = refresher
        self.reserved = reserved_concurrency
        self.latencies = latencies or Latencies()
        self.running = 0
        self.runs: Counter[str] = Counter()
        self.run_reasons: Counter[str] = Counter()
        self.throttles: Counter[str] = Counter()
        self.async_dropped = 0
        self.async_retried = 0

    def client(self, config: Config = LAMBDA_CONFIG) -> LambdaClientFake:
        return LambdaClientFake(self, _BotocoreRetries(_total_attempts(config)), float(config.read_timeout))

    def _try_start(self) -> bool:
        if self.running >= self.reserved:
            return False
        self.running += 1
        return True

    def _execute(self, event: Mapping[str, Any], kind: str) -> tuple[bytes, bool]:
        """One run in the function's slot (taken by the caller); releases the slot when it ends."""
        try:
            request = RefreshRequest.from_event(dict(event))
            outcome = self.refresher.run(request)
        except UsageEngineError as error:
            self.sim.sync()
            self.runs[f"{kind}:failed"] += 1
            self.run_reasons[f"failed:{type(getattr(error, 'cause', error)).__name__}"] += 1
            self.running -= 1
            document = {"errorType": type(error).__name__, "errorMessage": "token refresh failed"}
            return json.dumps(document).encode(), True
        self.sim.sync()
        self.runs[f"{kind}:{'refreshed' if outcome.refreshed else 'skipped'}"] += 1
        self.run_reasons[outcome.reason] += 1
        self.running -= 1
        return json.dumps(outcome.response()).encode(), False

    def invoke_async(self, event: Mapping[str, Any]) -> None:
        """An asynchronous invocation (the schedule's): Lambda's event queue delivers it."""
        self._deliver(dict(event), self.sim.clock(), attempt=0, throttled_delay=1.0)

    def _deliver(self, event: dict[str, Any], enqueued: float, *, attempt: int, throttled_delay: float) -> None:
        sim = self.sim

        def later(delay: float, next_attempt: int, next_throttled_delay: float) -> None:
            if sim.clock() + delay - enqueued > ASYNC_MAX_EVENT_AGE_SECONDS:
                self.async_dropped += 1
                return
            sim.after(
                delay,
                lambda: self._deliver(event, enqueued, attempt=next_attempt, throttled_delay=next_throttled_delay),
            )

        sim.sync()
        if not self._try_start():
            # A throttled event goes back to the queue, retried with growing delays until it is too old.
            self.throttles["async"] += 1
            later(throttled_delay, attempt, min(throttled_delay * 2, 60.0))
            return
        _, failed = self._execute(event, "scheduled" if event.get("reason", "scheduled") == "scheduled" else "async")
        if failed and attempt < ASYNC_MAX_RETRY_ATTEMPTS:
            self.async_retried += 1
            later(60.0 * (attempt + 1), attempt + 1, 1.0)


class LambdaClientFake:
    """Stands in for `boto3.client("lambda", config=LAMBDA_CONFIG)`: `invoke` with RequestResponse."""

    def __init__(self, function: LambdaFake, retries: _BotocoreRetries, read_timeout: float) -> None:
        self._function = function
        self._retries = retries
        self._read_timeout = read_timeout

    def invoke(self, *, FunctionName: str, Payload: bytes = b"{}", **_: Any) -> dict[str, Any]:  # noqa: N803
        function = self._function
        sim = function.sim
        event = json.loads(Payload or b"{}")
        attempt = 1
        while True:
            sim.elapse(_uniform(sim.rng, function.latencies.lambda_invoke))
            sim.sync()
            if function._try_start():
                break
            function.throttles["sync"] += 1
            if not self._retries.may_retry(attempt):
                raise _client_error("TooManyRequestsException", "Invoke", "Rate Exceeded.", 429)
            sim.elapse(self._retries.delay(sim.rng, attempt))
            attempt += 1
        self._retries.succeeded(attempt)
        future = sim.spawn(lambda: function._execute(event, "on-demand"))
        if not sim.wait(future, self._read_timeout):
            raise BotocoreReadTimeoutError(endpoint_url=f"https://lambda/{FunctionName}")
        payload, failed = future.value
        sim.elapse(_uniform(sim.rng, function.latencies.lambda_invoke))
        response: dict[str, Any] = {"StatusCode": 200, "Payload": io.BytesIO(payload)}
        if failed:
            response["FunctionError"] = "Unhandled"
        return response


# --------------------------------------------------------------------------------------------------------------
# The deployed bundle, and its consumers


@dataclass(frozen=True)
class BundleSettings:
    refresh_margin_seconds: int = DEFAULT_REFRESH_MARGIN_SECONDS
    rejected_cooldown_seconds: int = DEFAULT_REJECTED_TOKEN_COOLDOWN_SECONDS
    token_expiry_skew_seconds: int = DEFAULT_TOKEN_EXPIRY_SKEW_SECONDS
    schedule_interval_seconds: float = SCHEDULE_INTERVAL_SECONDS
    # When the first scheduled run fires after the start (the schedule's phase).
    schedule_offset_seconds: float = 0.0
    on_demand_refresh: bool = True


class Bundle:
    """Secrets Manager, the Usage Engine, the refresher function and its schedule, wired as template.yaml does."""

    def __init__(
        self,
        sim: Simulation,
        *,
        settings: BundleSettings | None = None,
        latencies: Latencies | None = None,
        get_quota: int | None = GET_SECRET_VALUE_QUOTA,
        revocations: tuple[float, ...] = (),
        outages: tuple[Outage, ...] = (),
        idp_rate_limit: bool = True,
    ) -> None:
        self.sim = sim
        self.settings = settings or BundleSettings()
        self.latencies = latencies or Latencies()
        self.secrets = SecretsManagerFake(sim, get_quota=get_quota, latencies=self.latencies)
        self.secrets.create(CREDENTIALS_SECRET, json.dumps({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}))
        self.secrets.create(TOKEN_SECRET)
        self.usage_engine = UsageEngineFake(
            sim, latencies=self.latencies, revocations=revocations, outages=outages, rate_limit=idp_rate_limit
        )
        refresher_secrets = self.secrets.client("refresher")
        exchange = ClientCredentialsExchange(
            session=cast(
                Any,
                FakeHttpSession(
                    sim, self.usage_engine.idp_transport, _session_retry(token_session()), sync_before_send=True
                ),
            ),
            clock=sim.clock,
        )
        refresher = TokenRefresher(
            store=TokenStore(SecretsManagerSecret(cast(Any, refresher_secrets), TOKEN_SECRET)),
            credentials=CredentialsSource(SecretsManagerSecret(cast(Any, refresher_secrets), CREDENTIALS_SECRET)),
            exchange=exchange,
            settings=RefresherSettings(
                credentials_secret_id=CREDENTIALS_SECRET,
                token_secret_id=TOKEN_SECRET,
                token_url=DEFAULT_TOKEN_URL,
                audience=DEFAULT_AUDIENCE,
                refresh_margin_seconds=self.settings.refresh_margin_seconds,
                rejected_cooldown_seconds=self.settings.rejected_cooldown_seconds,
            ),
            clock=sim.clock,
        )
        self.refresher = LambdaFake(sim, refresher, latencies=self.latencies)
        self._api_retry = _session_retry(api_session())
        self._schedule_until = sim.start

    def store_token(self, *, age_seconds: float) -> str:
        """Put a token issued `age_seconds` ago in the token secret (as if the refresher had run then)."""
        sim = self.sim
        issued = sim.now - age_seconds
        token = f"sim.0.{sim.rng.getrandbits(64):016x}"
        self.usage_engine.issued[token] = IssuedInfo(
            issued_at=issued, expires_at=int(issued) + self.usage_engine.expires_in
        )
        document = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_at": int(issued) + self.usage_engine.expires_in,
            "issued_at": int(issued),
            "scope": "read:meters",
            "audience": DEFAULT_AUDIENCE,
        }
        self.secrets.create(TOKEN_SECRET, json.dumps(document))
        return token

    def schedule(self, until: float) -> None:
        """EventBridge Scheduler: an asynchronous `{"reason": "scheduled"}` invoke every interval until `until`."""
        interval = self.settings.schedule_interval_seconds
        when = self.sim.start + self.settings.schedule_offset_seconds
        while when < until:
            self.sim.at(when, lambda: self.refresher.invoke_async({"reason": "scheduled"}))
            when += interval

    def consumer(self, name: str) -> Consumer:
        return Consumer(self, name)


# A layer whose UsageEngineClient reads time (e.g. for a hold-off) gets the simulation's clock.
_CLIENT_TAKES_CLOCK = "clock" in inspect.signature(UsageEngineClient.__init__).parameters


def _session_retry(session: requests.Session) -> Retry:
    """The Retry a layer session really mounts (so the simulation retries exactly as the layer does)."""
    retry = session.get_adapter("https://").max_retries
    session.close()
    return cast(Retry, retry)


class TokenGaps:
    """Stretches without a valid token, for one consumer (a container, or a function's containers together).

    A stretch starts when the token last used successfully stopped being valid (`expires_at` minus the expiry
    skew, or its revocation) - or at the first failed request, if that came earlier - and ends at the next
    successful request. Only stretches with failed requests count.
    """

    def __init__(self) -> None:
        self.good_until: float | None = None
        self.failing_since: float | None = None
        self.gaps: list[tuple[float, float]] = []
        self.longest = 0.0
        self.longest_at: float | None = None

    def failed(self, started: float) -> None:
        if self.failing_since is None:
            good_until = self.good_until
            self.failing_since = good_until if good_until is not None and good_until <= started else started

    def succeeded(self, now: float, good_until: float) -> None:
        if self.failing_since is not None:
            self._record(self.failing_since, now)
            self.failing_since = None
        self.good_until = good_until

    def finish(self, end: float) -> None:
        if self.failing_since is not None:
            self._record(self.failing_since, end)
            self.failing_since = None

    def _record(self, since: float, until: float) -> None:
        self.gaps.append((since, until))
        if until - since > self.longest:
            self.longest = until - since
            self.longest_at = since


def _unique_gaps(consumers: list[Consumer]) -> list[TokenGaps]:
    seen: dict[int, TokenGaps] = {}
    for consumer in consumers:
        seen.setdefault(id(consumer.token_gaps), consumer.token_gaps)
    return list(seen.values())


@dataclass
class ConsumerStats:
    invocations: int = 0
    succeeded: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    cold_starts: int = 0
    queued: int = 0
    slowest_invocation: float = 0.0
    slowest_failure: float = 0.0


class Consumer:
    """One consumer Lambda container: its own clients, the real TokenProvider and UsageEngineClient."""

    def __init__(self, bundle: Bundle, name: str, token_gaps: TokenGaps | None = None) -> None:
        sim = bundle.sim
        self.bundle = bundle
        self.sim = sim
        self.name = name
        self.token_gaps = token_gaps or TokenGaps()
        self.secrets = bundle.secrets.client("consumer")
        self.tokens = TokenProvider(
            TokenStore(SecretsManagerSecret(cast(Any, self.secrets), TOKEN_SECRET)),
            clock=sim.clock,
            expiry_skew_seconds=bundle.settings.token_expiry_skew_seconds,
        )
        requester = (
            LambdaRefreshRequester(cast(Any, bundle.refresher.client()), REFRESHER)
            if bundle.settings.on_demand_refresh
            else None
        )
        self.session = FakeHttpSession(
            sim, bundle.usage_engine.api_transport, bundle._api_retry, sync_before_send=False
        )
        extra: dict[str, Any] = {"clock": sim.clock} if _CLIENT_TAKES_CLOCK else {}
        self.client = UsageEngineClient(
            DEFAULT_API_URL,
            self.tokens,
            refresher=requester,
            session=cast(Any, self.session),
            sleep=sim.elapse,
            **extra,
        )
        self.stats = ConsumerStats()
        self.cold = True
        self.busy_until = -math.inf
        self._active = False
        self._backlog = 0
        # (time, error type) of every failed request.
        self.failure_log: list[tuple[float, str]] = []

    def invoke(self) -> None:
        """One invocation arrives now. A container runs one at a time (as Lambda's do): while it is busy,
        arrivals wait their turn; a cold container initialises first."""
        sim = self.sim
        self._backlog += 1
        if self._active:
            self.stats.queued += 1
            return
        self._active = True
        begin = sim.now
        if self.busy_until > begin:
            self.stats.queued += 1
            begin = self.busy_until
        if self.cold:
            # Init (runtime start, imports) as its own stretch of time: the handler runs when it is over.
            self.cold = False
            self.stats.cold_starts += 1
            begin += _uniform(sim.rng, self.bundle.latencies.cold_start)
        if begin > sim.now:
            sim.at(begin, self._serve)
        else:
            self._serve()

    def _serve(self) -> None:
        sim = self.sim
        while True:
            self._backlog -= 1
            self._handle()
            if not self._backlog:
                break
            sim.sync()
        self.busy_until = sim.clock()
        self._active = False

    def _handle(self) -> None:
        sim = self.sim
        started = sim.now
        stats = self.stats
        stats.invocations += 1
        try:
            self.client.request("GET", METERS_PATH)
        except UsageEngineError as error:
            kind = type(error).__name__
            stats.failures[kind] += 1
            stats.slowest_failure = max(stats.slowest_failure, sim.clock() - started)
            self.failure_log.append((started, kind))
            self.token_gaps.failed(started)
        else:
            stats.succeeded += 1
            elapsed = sim.clock() - started
            if elapsed > stats.slowest_invocation:
                stats.slowest_invocation = elapsed
            token = (self.session.last_authorization or "")[7:]
            self.token_gaps.succeeded(
                sim.clock(),
                self.bundle.usage_engine.valid_until(token, skew=self.bundle.settings.token_expiry_skew_seconds),
            )

    def finish(self, end: float) -> None:
        """At the end of a run: a consumer still failing counts its stretch up to `end`."""
        self.token_gaps.finish(end)


class ConsumerFunction:
    """A consumer Lambda function: an invocation goes to an idle warm container; when every container is busy,
    Lambda starts a new one (cold). Use this when invocations can be slow (a failing refresh loop), so they do not
    queue behind each other as they would on a fixed set of containers."""

    def __init__(self, bundle: Bundle, name: str) -> None:
        self.bundle = bundle
        self.name = name
        self.containers: list[Consumer] = []
        self.token_gaps = TokenGaps()

    def invoke(self) -> None:
        now = self.bundle.sim.now
        for container in reversed(self.containers):
            if not container._active and container.busy_until <= now:
                container.invoke()
                return
        container = Consumer(self.bundle, f"{self.name}-{len(self.containers)}", self.token_gaps)
        self.containers.append(container)
        container.invoke()


# --------------------------------------------------------------------------------------------------------------
# Powertools' parameters cache on the simulated clock (the 300 s TTL alternative)


@contextlib.contextmanager
def powertools_on_clock(sim: Simulation) -> Iterator[None]:
    """Make Powertools' parameter cache (`datetime.now()` in parameters/base.py) read the simulated clock."""
    from aws_lambda_powertools.utilities.parameters import base

    class SimulatedDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> SimulatedDatetime:
            return cls.fromtimestamp(sim.clock(), tz)

    original = base.datetime
    base.datetime = SimulatedDatetime  # type: ignore[misc]
    try:
        yield
    finally:
        base.datetime = original  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------------------
# Scenarios shared by benchmarks/ and tests/simulation/


def _poisson_arrivals(
    sim: Simulation, consumer: Consumer | ConsumerFunction, rate: float, first: float, end: float
) -> None:
    """Invocations of `consumer` as a Poisson process of `rate` per second, the first one at `first`."""
    expovariate = sim.rng.expovariate

    def arrive() -> None:
        nxt = sim.now + expovariate(rate)
        if nxt < end:
            sim.at(nxt, arrive)
        consumer.invoke()

    if first < end:
        sim.at(first, arrive)


@dataclass(frozen=True)
class FleetScenario:
    """Many consumer containers under a steady load, with a synchronized cold-start wave and revocations.

    Times are seconds after the start. Each container gets a Poisson stream of invocations; with
    `cold_start_wave_seconds` set, every container's first invocation falls inside that window at the start.
    """

    containers: int = 10_000
    invocations_per_hour: float = 5_000_000
    duration_seconds: float = 3600.0
    cold_start_wave_seconds: float | None = 1.0
    revocations_at: tuple[float, ...] = (1500.0,)
    # The token in the secret at the start, issued this long ago (None: the secret is empty).
    initial_token_age_seconds: float | None = 600.0
    settings: BundleSettings = BundleSettings(schedule_offset_seconds=37.0)
    latencies: Latencies = Latencies()
    get_quota: int | None = GET_SECRET_VALUE_QUOTA
    idp_rate_limit: bool = True
    outages: tuple[Outage, ...] = ()
    seed: int = 1


@dataclass
class Window:
    """Peaks within a stretch of the run (for example the seconds after a revocation)."""

    label: str
    start: float
    end: float
    secrets_reads: int
    secrets_reads_peak_per_second: int
    idp_requests: int
    idp_requests_peak_per_second: int
    failed_invocations: int


@dataclass
class FleetResult:
    scenario: FleetScenario
    invocations: int
    succeeded: int
    failures: Counter[str]
    cold_starts: int
    queued: int
    secrets_reads: int
    secrets_reads_by: Counter[str]
    secrets_reads_peak_per_second: int
    secrets_reads_peak_at: float | None
    secrets_throttled: int
    secrets_writes: int
    idp_requests: int
    idp_requests_peak_per_second: int
    idp_requests_peak_at: float | None
    idp_outcomes: Counter[str]
    refresher_runs: Counter[str]
    refresher_throttles: Counter[str]
    longest_without_token: float
    windows: list[Window]
    api_requests: int
    events: int
    suspensions: int
    max_threads: int
    wall_seconds: float

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def reads_per_container_hour(self) -> float:
        hours = self.scenario.duration_seconds / 3600
        return self.secrets_reads_by["consumer"] / (self.scenario.containers * hours)


def run_fleet(scenario: FleetScenario, *, windows: Mapping[str, tuple[float, float]] | None = None) -> FleetResult:
    """Simulate `scenario`; `windows` names stretches (seconds after the start) to report peaks for."""
    started = time.perf_counter()
    with Simulation(seed=scenario.seed) as sim:
        start = sim.start
        end = start + scenario.duration_seconds
        bundle = Bundle(
            sim,
            settings=scenario.settings,
            latencies=scenario.latencies,
            get_quota=scenario.get_quota,
            revocations=tuple(start + at for at in scenario.revocations_at),
            outages=tuple(_shifted(outage, start) for outage in scenario.outages),
            idp_rate_limit=scenario.idp_rate_limit,
        )
        if scenario.initial_token_age_seconds is not None:
            bundle.store_token(age_seconds=scenario.initial_token_age_seconds)
        bundle.schedule(end)
        rate = scenario.invocations_per_hour / 3600 / scenario.containers
        consumers = [bundle.consumer(f"c{index}") for index in range(scenario.containers)]
        for consumer in consumers:
            if scenario.cold_start_wave_seconds is not None:
                first = start + sim.rng.random() * scenario.cold_start_wave_seconds
            else:
                first = start + sim.rng.expovariate(rate)
            _poisson_arrivals(sim, consumer, rate, first, end)
        sim.run(end)
        for consumer in consumers:
            consumer.finish(sim.now)
        result = _fleet_result(scenario, sim, bundle, consumers, windows or {}, time.perf_counter() - started)
    return result


def _shifted(outage: Outage, start: float) -> Outage:
    return Outage(
        start=start + outage.start,
        end=start + outage.end,
        mode=outage.mode,
        status=outage.status,
        retry_after=outage.retry_after,
        down_seconds=outage.down_seconds,
        up_seconds=outage.up_seconds,
        label=outage.label,
    )


def _fleet_result(
    scenario: FleetScenario,
    sim: Simulation,
    bundle: Bundle,
    consumers: list[Consumer],
    windows: Mapping[str, tuple[float, float]],
    wall_seconds: float,
) -> FleetResult:
    secrets = bundle.secrets
    ue = bundle.usage_engine
    failures: Counter[str] = Counter()
    for consumer in consumers:
        failures.update(consumer.stats.failures)
    failure_times = _failure_times(consumers)

    def relative(second: float | None) -> float | None:
        return None if second is None else second - sim.start

    reported = []
    for label, (low, high) in windows.items():
        a, b = sim.start + low, sim.start + high
        reported.append(
            Window(
                label=label,
                start=low,
                end=high,
                secrets_reads=secrets.gets.between(a, b),
                secrets_reads_peak_per_second=max(
                    (n for s, n in secrets.gets.per_second.items() if a <= s < b), default=0
                ),
                idp_requests=ue.idp_requests.between(a, b),
                idp_requests_peak_per_second=max(
                    (n for s, n in ue.idp_requests.per_second.items() if a <= s < b), default=0
                ),
                failed_invocations=sum(1 for t in failure_times if a <= t < b),
            )
        )
    return FleetResult(
        scenario=scenario,
        invocations=sum(c.stats.invocations for c in consumers),
        succeeded=sum(c.stats.succeeded for c in consumers),
        failures=failures,
        cold_starts=sum(c.stats.cold_starts for c in consumers),
        queued=sum(c.stats.queued for c in consumers),
        secrets_reads=secrets.gets.total,
        secrets_reads_by=Counter(secrets.gets_by),
        secrets_reads_peak_per_second=secrets.gets.peak(),
        secrets_reads_peak_at=relative(secrets.gets.peak_second()),
        secrets_throttled=secrets.throttled["GetSecretValue"],
        secrets_writes=secrets.puts.total,
        idp_requests=ue.idp_requests.total,
        idp_requests_peak_per_second=ue.idp_requests.peak(),
        idp_requests_peak_at=relative(ue.idp_requests.peak_second()),
        idp_outcomes=Counter(ue.idp_outcomes),
        refresher_runs=Counter(bundle.refresher.runs),
        refresher_throttles=Counter(bundle.refresher.throttles),
        longest_without_token=max((g.longest for g in _unique_gaps(consumers)), default=0.0),
        windows=reported,
        api_requests=ue.api_requests.total,
        events=sim.events,
        suspensions=sim.suspensions,
        max_threads=sim.max_threads,
        wall_seconds=wall_seconds,
    )


def _failure_times(consumers: list[Consumer]) -> list[float]:
    times: list[float] = []
    for consumer in consumers:
        times.extend(when for when, _ in consumer.failure_log)
    return times


# --------------------------------------------------------------------------------------------------------------
# The simulated day (issue 5, item 5)

HOUR = 3600.0
MINUTE = 60.0


def default_day_outages() -> tuple[Outage, ...]:
    """Three IdP outages (seconds after the start of the day).

    With the schedule every 5 minutes from 00:00 and the first token issued then, a refresh falls due at every
    40th minute (40 minutes after the last refresh, 20 minutes - the margin - before the old token expires):
    the short outage starts exactly when one falls due, its worst moment at that phase.
    """
    return (
        Outage(
            start=2 * HOUR,
            end=2 * HOUR + 15 * MINUTE,
            mode="connect-timeout",
            label="short: unreachable for 15 min (< the 20 min margin), from a refresh falling due",
        ),
        Outage(
            start=8 * HOUR,
            end=9 * HOUR + 15 * MINUTE,
            mode="status",
            status=503,
            retry_after=30,
            label="long: 503 (Retry-After 30) for 75 min (> a token's 60 min lifetime)",
        ),
        Outage(
            start=16 * HOUR,
            end=16 * HOUR + 45 * MINUTE,
            mode="status",
            status=503,
            down_seconds=50.0,
            up_seconds=10.0,
            label="flapping: 503 for 50 s, up for 10 s, for 45 min",
        ),
    )


@dataclass(frozen=True)
class DayScenario:
    hours: float = 24.0
    consumers: int = 10
    # Each consumer container is invoked as a Poisson stream of this many calls per second.
    calls_per_second: float = 0.5
    outages: tuple[Outage, ...] = field(default_factory=default_day_outages)
    settings: BundleSettings = BundleSettings()
    latencies: Latencies = Latencies()
    seed: int = 5


@dataclass
class OutageReport:
    label: str
    start: float
    end: float
    failed_requests: int
    longest_without_token: float
    idp_requests: int


@dataclass
class DayResult:
    scenario: DayScenario
    idp_requests: int
    idp_outcomes: Counter[str]
    tokens_issued: int
    secrets_reads: int
    secrets_reads_by: Counter[str]
    secrets_writes: int
    requests: int
    failed_requests: int
    failures: Counter[str]
    longest_without_token: float
    longest_without_token_at: float | None
    outages: list[OutageReport]
    refresher_runs: Counter[str]
    refresher_reasons: Counter[str]
    refresher_throttles: Counter[str]
    async_retries: int
    async_dropped: int
    wall_seconds: float
    events: int
    containers: int
    cold_starts: int
    slowest_failure: float

    def render(self) -> str:
        """The day's report, for `make test` and the README."""
        s = self.scenario

        def clock(seconds: float) -> str:
            return f"{int(seconds // 3600):02d}:{int(seconds % 3600 // 60):02d}"

        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(self.idp_outcomes.items()))
        failures = ", ".join(f"{k} {v}" for k, v in sorted(self.failures.items())) or "none"
        runs = ", ".join(f"{k} {v}" for k, v in sorted(self.refresher_runs.items()))
        lines = [
            f"Simulated day: {s.hours:g} h, schedule every {s.settings.schedule_interval_seconds / 60:g} min, "
            f"margin {s.settings.refresh_margin_seconds} s, skew {s.settings.token_expiry_skew_seconds} s, "
            f"{s.consumers} consumers x {s.calls_per_second:g} calls/s (virtual clock, seed {s.seed}, "
            f"{self.wall_seconds:.1f} s wall)",
            f"  IdP token requests:      {self.idp_requests} HTTP attempts ({outcomes}); "
            f"{self.tokens_issued} tokens issued",
            f"  Secrets Manager:         {self.secrets_reads} GetSecretValue "
            f"(consumers {self.secrets_reads_by['consumer']}, refresher {self.secrets_reads_by['refresher']}), "
            f"{self.secrets_writes} PutSecretValue",
            f"  consumer requests:       {self.requests}, failed {self.failed_requests} ({failures}); "
            f"{self.containers} containers ({self.cold_starts} cold starts)",
            f"  longest without a valid token (any consumer): {self.longest_without_token:.1f} s"
            + (f" (from {clock(self.longest_without_token_at)})" if self.longest_without_token_at is not None else ""),
            f"  refresher runs:          {runs}; throttled invokes: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.refresher_throttles.items()))
            + f"; async retries {self.async_retries}, dropped {self.async_dropped}",
            "  outages:",
        ]
        for outage in self.outages:
            lines.append(
                f"    {clock(outage.start)}-{clock(outage.end)} {outage.label}: failed requests "
                f"{outage.failed_requests}, longest without a valid token {outage.longest_without_token:.1f} s, "
                f"IdP attempts {outage.idp_requests}"
            )
        return "\n".join(lines)


def run_day(scenario: DayScenario | None = None) -> DayResult:
    scenario = scenario or DayScenario()
    started = time.perf_counter()
    with Simulation(seed=scenario.seed) as sim:
        start = sim.start
        end = start + scenario.hours * HOUR
        bundle = Bundle(
            sim,
            settings=scenario.settings,
            latencies=scenario.latencies,
            outages=tuple(_shifted(outage, start) for outage in scenario.outages),
        )
        bundle.schedule(end)
        functions = [ConsumerFunction(bundle, f"f{index}") for index in range(scenario.consumers)]
        for function in functions:
            # The first scheduled run (00:00) stores the first token; consumers start right after it.
            _poisson_arrivals(sim, function, scenario.calls_per_second, start + 5 + sim.rng.random(), end)
        sim.run(end)
        consumers = [container for function in functions for container in function.containers]
        for consumer in consumers:
            consumer.finish(sim.now)
        ue = bundle.usage_engine
        failures: Counter[str] = Counter()
        for consumer in consumers:
            failures.update(consumer.stats.failures)
        trackers = _unique_gaps(consumers)
        longest = max(trackers, key=lambda g: g.longest)
        reports = []
        for outage in scenario.outages:
            # What an outage caused shows up while it lasts and until a token's lifetime after it.
            low, high = start + outage.start, start + outage.end + HOUR
            gaps = [b - a for g in trackers for a, b in g.gaps if low <= a < high]
            reports.append(
                OutageReport(
                    label=outage.label,
                    start=outage.start,
                    end=outage.end,
                    failed_requests=sum(1 for c in consumers for t, _ in c.failure_log if low <= t < high),
                    longest_without_token=max(gaps, default=0.0),
                    idp_requests=ue.idp_requests.between(start + outage.start, start + outage.end),
                )
            )
        result = DayResult(
            scenario=scenario,
            idp_requests=ue.idp_requests.total,
            idp_outcomes=Counter(ue.idp_outcomes),
            tokens_issued=ue.idp_issued.total,
            secrets_reads=bundle.secrets.gets.total,
            secrets_reads_by=Counter(bundle.secrets.gets_by),
            secrets_writes=bundle.secrets.puts.total,
            requests=sum(c.stats.invocations for c in consumers),
            failed_requests=sum(failures.values()),
            failures=failures,
            longest_without_token=longest.longest,
            longest_without_token_at=None if longest.longest_at is None else longest.longest_at - start,
            outages=reports,
            refresher_runs=Counter(bundle.refresher.runs),
            refresher_reasons=Counter(bundle.refresher.run_reasons),
            refresher_throttles=Counter(bundle.refresher.throttles),
            async_retries=bundle.refresher.async_retried,
            async_dropped=bundle.refresher.async_dropped,
            wall_seconds=time.perf_counter() - started,
            events=sim.events,
            containers=len(consumers),
            cold_starts=sum(c.stats.cold_starts for c in consumers),
            slowest_failure=max((c.stats.slowest_failure for c in consumers), default=0.0),
        )
    return result


@dataclass
class OutageCase:
    duration: float
    left_when_due: float
    failed_requests: int
    requests: int
    longest_without_token: float


def run_outage_case(
    duration: float,
    *,
    left_when_due: float,
    mode: str = "connect-timeout",
    consumers: int = 5,
    calls_per_second: float = 1.0,
    settings: BundleSettings | None = None,
    seed: int = 11,
) -> OutageCase:
    """An IdP outage of `duration` s that starts at the scheduled run where a refresh falls due, the stored
    token then having `left_when_due` s left (between margin - interval and margin)."""
    settings = settings or BundleSettings()
    interval = settings.schedule_interval_seconds
    due = 2 * interval
    with Simulation(seed=seed) as sim:
        start = sim.start
        expires_at = due + left_when_due
        outage = Outage(start=start + due, end=start + due + duration, mode=mode)
        bundle = Bundle(sim, settings=settings, outages=(outage,))
        bundle.store_token(age_seconds=3600 - expires_at)
        end = start + expires_at + duration + 15 * MINUTE
        bundle.schedule(end)
        functions = [ConsumerFunction(bundle, f"f{i}") for i in range(consumers)]
        for function in functions:
            _poisson_arrivals(sim, function, calls_per_second, start + sim.rng.random(), end)
        sim.run(end)
        fleet = [container for function in functions for container in function.containers]
        for consumer in fleet:
            consumer.finish(sim.now)
        return OutageCase(
            duration=duration,
            left_when_due=left_when_due,
            failed_requests=sum(sum(c.stats.failures.values()) for c in fleet),
            requests=sum(c.stats.invocations for c in fleet),
            longest_without_token=max(g.longest for g in _unique_gaps(fleet)),
        )


# --------------------------------------------------------------------------------------------------------------
# Secrets Manager reads per container-hour: this layer, a 300 s TTL cache, no cache (issue 6, item 2)

READ_STRATEGIES = ("layer", "ttl-300s", "no-cache")


def reads_per_container_hour(strategy: str, calls_per_second: float, *, hours: float = 4.0, seed: int = 3) -> float:
    """GetSecretValue calls one container makes per hour at a steady `calls_per_second` (the first hour,
    with its cold start, is left out), the refresher keeping the token fresh on its schedule.

    layer: `TokenProvider.get()`; ttl-300s: Powertools' `SecretsProvider.get()` with its default max_age
    (300 s, also the Parameters and Secrets extension's maximum TTL); no-cache: GetSecretValue every call.
    """
    if strategy not in READ_STRATEGIES:
        raise ValueError(f"strategy must be one of {READ_STRATEGIES}")
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

    with Simulation(seed=seed) as sim, powertools_on_clock(sim):
        start = sim.start
        end = start + hours * HOUR
        bundle = Bundle(sim, settings=BundleSettings(schedule_offset_seconds=37.0))
        bundle.store_token(age_seconds=600)
        bundle.schedule(end)
        client = cast(Any, bundle.secrets.client("consumer"))
        read: Callable[[], object]
        if strategy == "layer":
            read = TokenProvider(TokenStore(SecretsManagerSecret(client, TOKEN_SECRET)), clock=sim.clock).get
        elif strategy == "ttl-300s":
            provider = SecretsProvider(boto3_client=client)

            def read() -> object:
                return provider.get(TOKEN_SECRET)

        else:
            read = SecretsManagerSecret(client, TOKEN_SECRET).read
        interval = 1 / calls_per_second
        warm_calls: list[int] = []
        warm_reads: list[int] = []

        def calls() -> None:
            # One long event on its own time line: it syncs (and lets the schedule run) only when it reads.
            when, warm, made = sim.now, start + HOUR, 0
            while True:
                sim.elapse(when - sim.clock())
                now = sim.clock()
                if now >= end:
                    break
                if now >= warm and not warm_reads:
                    warm_reads.append(client.calls)
                    warm_calls.append(made)
                read()
                made += 1
                when += interval
            warm_reads.append(client.calls)
            warm_calls.append(made)

        sim.at(start, calls)
        sim.run(end + 1)
    reads = warm_reads[1] - warm_reads[0]
    made = warm_calls[1] - warm_calls[0]
    # Reads per call times calls per hour: without a cache one container cannot keep up with 100 calls/s
    # (each waits for GetSecretValue), so it is normalised per call, as if more containers served the rate.
    return reads / max(made, 1) * calls_per_second * HOUR


# --------------------------------------------------------------------------------------------------------------
# 401 storms: every container of a warm fleet sees its token rejected at once (issue 6, item 3)


@dataclass
class StormResult:
    containers: int
    idp_requests: int
    secrets_reads: int
    reads_per_container: float
    refresher_invocations: int
    throttled_invokes: int
    failed_requests: int
    failures: Counter[str]
    slowest_recovery: float
    wall_seconds: float


def run_storm(
    containers: int,
    *,
    token_age_seconds: float = 600.0,
    spread_seconds: float = 1.0,
    seed: int = 7,
    settings: BundleSettings | None = None,
) -> StormResult:
    """A warm fleet; the IdP revokes every token; each container's next call comes within `spread_seconds`."""
    started = time.perf_counter()
    with Simulation(seed=seed) as sim:
        start = sim.start
        revoked_at = start + 60
        bundle = Bundle(
            sim, settings=settings or BundleSettings(schedule_offset_seconds=37.0), revocations=(revoked_at,)
        )
        bundle.store_token(age_seconds=token_age_seconds - 60)
        bundle.schedule(start + 180)
        fleet = [bundle.consumer(f"c{i}") for i in range(containers)]
        for consumer in fleet:
            sim.at(start + 10 * sim.rng.random(), consumer.invoke)
        sim.run(revoked_at)
        for consumer in fleet:
            consumer.stats.slowest_invocation = 0.0
        reads_before = bundle.secrets.gets_by["consumer"]
        idp_before = bundle.usage_engine.idp_requests.total
        runs_before = sum(bundle.refresher.runs.values())
        throttles_before = sum(bundle.refresher.throttles.values())
        for consumer in fleet:
            sim.at(revoked_at + spread_seconds * sim.rng.random(), consumer.invoke)
        sim.run(start + 180)
        failures: Counter[str] = Counter()
        for consumer in fleet:
            failures.update(consumer.stats.failures)
        reads = bundle.secrets.gets_by["consumer"] - reads_before
        result = StormResult(
            containers=containers,
            idp_requests=bundle.usage_engine.idp_requests.total - idp_before,
            secrets_reads=reads,
            reads_per_container=reads / containers,
            refresher_invocations=sum(bundle.refresher.runs.values()) - runs_before,
            throttled_invokes=sum(bundle.refresher.throttles.values()) - throttles_before,
            failed_requests=sum(failures.values()),
            failures=failures,
            slowest_recovery=max(c.stats.slowest_invocation for c in fleet),
            wall_seconds=time.perf_counter() - started,
        )
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m local.simulation day` prints the simulated day's report (issue 5, item 5)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args[:1] != ["day"]:
        print("usage: python -m local.simulation day", file=sys.stderr)
        return 2
    print(run_day().render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
