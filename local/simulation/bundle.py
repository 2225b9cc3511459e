"""The deployed bundle on the simulation: the fakes wired as template.yaml wires them, and consumer containers
running the REAL layer code (`TokenProvider`, `UsageEngineClient` with its `TokenRecovery`,
`LambdaRefreshRequester`; `TokenRefresher` inside the refresher function), each built through
`usage_engine.Components` from the container's fake boto3 clients, the virtual clock and sleep."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

from local.simulation.engine import Simulation
from local.simulation.fake_http import FakeHttpSession, session_retry
from local.simulation.fake_usage_engine import CLIENT_ID, CLIENT_SECRET, IssuedInfo, Outage, UsageEngineFake
from local.simulation.fakes_aws import GET_SECRET_VALUE_QUOTA, LambdaFake, SecretsManagerFake
from local.simulation.latencies import Latencies, uniform
from usage_engine import ClientCredentialsExchange, Components, ConsumerSettings, RefresherSettings, UsageEngineError
from usage_engine.api_client import api_session
from usage_engine.idp import token_session
from usage_engine.metering import METERS_PATH
from usage_engine.settings import (
    DEFAULT_API_URL,
    DEFAULT_AUDIENCE,
    DEFAULT_REFRESH_MARGIN_SECONDS,
    DEFAULT_REJECTED_TOKEN_COOLDOWN_SECONDS,
    DEFAULT_TOKEN_EXPIRY_SKEW_SECONDS,
    DEFAULT_TOKEN_URL,
)

CREDENTIALS_SECRET = "usage-engine/credentials"
TOKEN_SECRET = "usage-engine/token"
REFRESHER = "token-refresher"
SCHEDULE_INTERVAL_SECONDS = 300.0


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
        idp_session = FakeHttpSession(
            sim, self.usage_engine.idp_transport, session_retry(token_session()), sync_before_send=True
        )
        # The refresher function's container. Components cannot be handed the IdP's session, only a whole
        # exchange: this is the one object built here rather than by Components.
        self.refresher_components = Components(
            clock=sim.clock,
            sleep=sim.elapse,
            secrets_manager=cast(Any, self.secrets.client("refresher")),
            exchange=ClientCredentialsExchange(session=cast(Any, idp_session), clock=sim.clock),
        )
        refresher = self.refresher_components.refresher(
            RefresherSettings(
                credentials_secret_id=CREDENTIALS_SECRET,
                token_secret_id=TOKEN_SECRET,
                token_url=DEFAULT_TOKEN_URL,
                audience=DEFAULT_AUDIENCE,
                refresh_margin_seconds=self.settings.refresh_margin_seconds,
                rejected_cooldown_seconds=self.settings.rejected_cooldown_seconds,
            )
        )
        self.refresher = LambdaFake(sim, refresher, latencies=self.latencies)
        # What a consumer function's environment says (template.yaml), as ConsumerSettings.from_env reads it.
        self.consumer_settings = ConsumerSettings(
            token_secret_id=TOKEN_SECRET,
            api_url=DEFAULT_API_URL,
            refresher_function=REFRESHER if self.settings.on_demand_refresh else None,
            token_expiry_skew_seconds=self.settings.token_expiry_skew_seconds,
        )
        self._api_retry = session_retry(api_session())

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


def unique_gaps(consumers: list[Consumer]) -> list[TokenGaps]:
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
    """One consumer Lambda container: its own Components (fake boto3 clients, API session), hence its own
    TokenProvider and UsageEngineClient."""

    def __init__(self, bundle: Bundle, name: str, token_gaps: TokenGaps | None = None) -> None:
        sim = bundle.sim
        self.bundle = bundle
        self.sim = sim
        self.name = name
        self.token_gaps = token_gaps or TokenGaps()
        self.session = FakeHttpSession(
            sim, bundle.usage_engine.api_transport, bundle._api_retry, sync_before_send=False
        )
        # The container's own boto3 clients and pooled API session, wired as a consumer function wires them.
        self.components = Components(
            clock=sim.clock,
            sleep=sim.elapse,
            secrets_manager=cast(Any, bundle.secrets.client("consumer")),
            lambda_client=cast(Any, bundle.refresher.client()),
            client_options={"session": self.session},
        )
        self.client = self.components.client(bundle.consumer_settings)
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
            begin += uniform(sim.rng, self.bundle.latencies.cold_start)
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


def poisson_arrivals(
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
