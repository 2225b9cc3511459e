"""AWS at the boundary: Secrets Manager and the refresher's Lambda function, with boto3-like clients.

* `SecretsManagerFake`: GetSecretValue/PutSecretValue with the account quotas (10,000/s and 50/s), throttling
  answered as AWS does, and botocore's "standard" retry mode (attempts from the layer's own `Config`,
  jittered exponential backoff, per-client retry quota) modelled in its clients;
* `LambdaFake`: the refresher function with reserved concurrency 1: synchronous invokes (throttled with
  TooManyRequestsException, botocore retries, the client's read timeout) and the schedule's asynchronous
  ones (throttled events re-queued, failed runs retried about 1 and 2 minutes later, events older than the
  maximum event age dropped).
"""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, cast

from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.exceptions import ReadTimeoutError as BotocoreReadTimeoutError

from local.simulation.engine import Rate, Simulation
from local.simulation.latencies import Latencies, uniform
from usage_engine import RefreshRequest, TokenRefresher, UsageEngineError
from usage_engine.aws_clients import LAMBDA_CONFIG, SECRETS_MANAGER_CONFIG

# AWS quotas (per account and Region): GetSecretValue (with DescribeSecret) 10,000/s, PutSecretValue 50/s.
GET_SECRET_VALUE_QUOTA = 10_000
PUT_SECRET_VALUE_QUOTA = 50
# The refresher as template.yaml deploys it.
RESERVED_CONCURRENCY = 1
ASYNC_MAX_RETRY_ATTEMPTS = 2
ASYNC_MAX_EVENT_AGE_SECONDS = 240.0


def _client_error(code: str, operation: str, message: str = "", status: int = 400) -> ClientError:
    response = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
    # botocore's stubs want every ResponseMetadata key; the layer reads only the code and the status.
    return ClientError(cast(Any, response), operation)


def total_attempts(config: Config) -> int:
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
        self.gets_by: Counter[str] = Counter()

    def create(self, name: str, value: str | None = None) -> None:
        self._versions[name] = [] if value is None else [value]

    def current(self, name: str) -> str | None:
        versions = self._versions.get(name)
        return versions[-1] if versions else None

    def client(self, role: str, config: Config = SECRETS_MANAGER_CONFIG) -> SecretsManagerClientFake:
        return SecretsManagerClientFake(self, role, _BotocoreRetries(total_attempts(config)))

    def _get(self, name: str, role: str) -> dict[str, Any]:
        now = self.sim.now
        self.gets.add(now)
        self.gets_by[role] += 1
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
        return self._call(lambda: self._service._get(SecretId, self._role), self._service.latencies.secrets_get)

    def put_secret_value(self, *, SecretId: str, SecretString: str, **_: Any) -> dict[str, Any]:  # noqa: N803
        return self._call(lambda: self._service._put(SecretId, SecretString), self._service.latencies.secrets_put)

    def _call(self, attempt_call: Callable[[], dict[str, Any]], latency: tuple[float, float]) -> dict[str, Any]:
        sim = self._service.sim
        attempt = 1
        while True:
            sim.sync()
            self.calls += 1
            try:
                result = attempt_call()
            except ClientError as error:
                sim.elapse(uniform(sim.rng, latency))
                code = error.response["Error"]["Code"]
                if code != "ThrottlingException" or not self._retries.may_retry(attempt):
                    raise
                sim.elapse(self._retries.delay(sim.rng, attempt))
                attempt += 1
                continue
            sim.elapse(uniform(sim.rng, latency))
            self._retries.succeeded(attempt)
            return result


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
        return LambdaClientFake(self, _BotocoreRetries(total_attempts(config)), float(cast(Any, config).read_timeout))

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
            sim.elapse(uniform(sim.rng, function.latencies.lambda_invoke))
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
        sim.elapse(uniform(sim.rng, function.latencies.lambda_invoke))
        response: dict[str, Any] = {"StatusCode": 200, "Payload": io.BytesIO(payload)}
        if failed:
            response["FunctionError"] = "Unhandled"
        return response
