"""Driving the meter_query handler (the HTTP API) through a fault, as Lambda invokes it, and reading its answers.

A row's scenario prepares the container (`prepare`), opens an observation window (`observing`), and asks
(`ask`) as often as the row needs; the typed error behind each answer is what the handler mapped to it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

from local.lambda_runtime import LocalLambdaContext, invoke, load_event, load_module
from local.stack import timeout_of
from tests.reliability.harness.context import Ctx, Observation, snapshot, versions
from usage_engine import fingerprint

QUERY_EVENT = "meter-query-http-api.json"


def prepare(ctx: Ctx, *, seed: bool = True, client_options: Mapping[str, Any] | None = None) -> None:
    """On-demand refresh on, a good token stored (unless `seed` is False), and a new consumer container whose
    recovery waits are recorded, not slept."""
    ctx.fixture("consumers")
    if seed:
        invoke("token_refresher", load_event("refresher-scheduled.json"))
    ctx.container(client_options=client_options)


def expire_stored_token(ctx: Ctx) -> None:
    """The stored token as an operator would find it after an hour without refreshes."""
    now = int(time.time())
    ctx.deployment.write_token(ctx.deployment.stored_token() | {"issued_at": now - 3700, "expires_at": now - 100})


def spy_on_mapped_errors(ctx: Ctx) -> list[BaseException]:
    """Every error meter_query turned into an answer, in order (its `_map_error`, looked up at call time)."""
    module = load_module("meter_query")
    original = module._map_error
    mapped: list[BaseException] = []

    def spying(error: BaseException) -> Any:
        mapped.append(error)
        return original(error)

    ctx.monkeypatch.setattr(module, "_map_error", spying)
    return mapped


@contextlib.contextmanager
def observing(ctx: Ctx) -> Iterator[Observation]:
    """The window a row is judged on: token secret before and after, the handlers' output, the mapped errors."""
    ctx.backoff.clear()
    obs = Observation(before=snapshot(ctx.deployment), versions_before=versions(ctx.deployment))
    mapped = spy_on_mapped_errors(ctx)
    ctx.output()
    yield obs
    obs.out = ctx.output()
    obs.after = snapshot(ctx.deployment)
    obs.versions_after = versions(ctx.deployment)
    obs.errors_seen = [type(error).__name__ for error in mapped]


def ask(obs: Observation, *, timeout: float | None = None) -> dict[str, Any]:
    """One meter_query invocation with a context of `timeout` seconds (default: the template's)."""
    seconds = timeout_of("meter_query") if timeout is None else timeout
    context = LocalLambdaContext(function_name="meter_query", timeout_seconds=seconds)
    answer = dict(invoke("meter_query", load_event(QUERY_EVENT), context=context))
    obs.left_ms.append(context.get_remaining_time_in_millis())
    obs.answers.append(answer)
    obs.returned = answer
    return answer


def error_code(answer: Mapping[str, Any]) -> str | None:
    body = json.loads(answer.get("body") or "{}")
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def header(answer: Mapping[str, Any], name: str) -> str | None:
    headers = {key.lower(): value for key, value in (answer.get("headers") or {}).items()}
    value = headers.get(name.lower())
    return str(value) if value is not None else None


def stored_fingerprint(ctx: Ctx) -> str:
    return fingerprint(ctx.deployment.stored_token()["access_token"])
