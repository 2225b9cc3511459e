"""Driving the token_refresher handler through a fault, as Lambda invokes it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from local.lambda_runtime import invoke, load_event
from tests.reliability.harness.context import Ctx, Observation, snapshot, versions
from usage_engine import ClientCredentialsExchange

DEEP_JSON = b"[" * 5000 + b"]" * 5000


def run_refresher(
    ctx: Ctx,
    fault: Callable[[], None] | None = None,
    *,
    event: str | dict[str, Any] = "refresher-forced.json",
    seed: bool = True,
) -> Observation:
    """Seed a good token (unless `seed` is False), inject `fault`, then run the refresher with `event` (a file in
    events/, or the event itself).

    Every test starts with a new container and an empty AWS, so the default forced run is never held back by
    an earlier forced run: at most one forced IdP request per 10 minutes is counted per container and, in the
    token secret's notes, per credentials version; the seed is a scheduled run and leaves no such note."""
    if seed:
        invoke("token_refresher", load_event("refresher-scheduled.json"))
    if fault is not None:
        fault()
    ctx.backoff.clear()
    obs = Observation(before=snapshot(ctx.deployment), versions_before=versions(ctx.deployment))
    ctx.output()
    try:
        obs.returned = invoke("token_refresher", load_event(event) if isinstance(event, str) else event)
    except Exception as error:  # noqa: BLE001 - the row says which error it must be
        obs.error = error
    obs.out = ctx.output()
    obs.after = snapshot(ctx.deployment)
    obs.versions_after = versions(ctx.deployment)
    return obs


def idp_requests(ctx: Ctx) -> int:
    return ctx.emulator.token_requests


def assert_backoff_schedule(sleeps: list[float]) -> None:
    """urllib3 with backoff_factor 0.5 and jitter 0.5: no wait before the 1st retry, then 1-1.5 s, 2-2.5 s."""
    assert len(sleeps) == 2, sleeps
    assert 1.0 <= sleeps[0] <= 1.5
    assert 2.0 <= sleeps[1] <= 2.5


def assert_not_retried(ctx: Ctx) -> None:
    assert idp_requests(ctx) == 1 + 1
    assert ctx.backoff.http == []


def short_timeouts(ctx: Ctx, connect: float, read: float) -> None:
    """The container's exchange with the production retry policy and shorter timeouts than production."""
    ctx.container(exchange=ClientCredentialsExchange(timeout=(connect, read)))


def transformed(ctx: Ctx, transform: Callable[[dict[str, Any]], dict[str, Any]]) -> Observation:
    obs = run_refresher(ctx, lambda: ctx.emulator.transform_next_token_responses(1, transform))
    assert_not_retried(ctx)
    return obs
