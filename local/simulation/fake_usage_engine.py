"""The Usage Engine at the boundary, as local/usage_engine_emulator.py behaves, on the simulation's clock.

The IdP's token endpoint (the emulator's rate limiter, 10/s burst 5 and 1,000 per 5 minutes; outages as
connect timeouts, refused connections or (flapping) 5xx) and the API (401 for an unknown, expired or revoked
token). The API answer depends only on the token and the time (revocations are known in advance), so API calls
need no sync.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from local.simulation.engine import Rate, Simulation
from local.simulation.fake_http import HttpAnswer, Transport
from local.simulation.latencies import Latencies, uniform
from local.usage_engine_emulator import _RateLimiter

CLIENT_ID = "sim-client"
# Not a secret anyone uses: the simulated IdP only compares it.
CLIENT_SECRET = "sim-client-secret"


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

    def shifted(self, start: float) -> Outage:
        """The same outage with its times counted from `start` (scenarios give them relative to the start)."""
        return dataclasses.replace(self, start=start + self.start, end=start + self.end)


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
        latency = uniform(sim.rng, ue.latencies.idp)
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
        latency = uniform(sim.rng, ue.latencies.api)
        authorization = headers.get("Authorization", "")
        if authorization.startswith("Bearer ") and ue.accepts(authorization[7:], now):
            return HttpAnswer(200, UsageEngineFake.OK_BODY, seconds=latency)
        return HttpAnswer(401, b'{"error":"invalid_token"}', seconds=latency)
