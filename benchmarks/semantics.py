"""Section 7: production semantics measured on real parts (moto, the Usage Engine emulator, the handlers as
Lambda invokes them) and on the real refresher over a virtual clock, next to the previous release's figures.

The previous release's figures cannot be re-measured here (its code is gone); they are the ones measured on it,
under the same conditions, before the change, and are labelled so."""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from typing import Any

from benchmarks.harness import environment
from benchmarks.report import Section, Target, table

API_DELAY_SECONDS = 8.0


def _handler_deadlines(quick: bool) -> list[list[str]]:
    from local.lambda_runtime import LocalLambdaContext, invoke, load_event, load_module
    from local.moto_server import MotoServer
    from local.resources import create_resources
    from local.stack import CREDENTIALS_SECRET, LocalEndpoints, shared_environment
    from local.usage_engine_emulator import UsageEngineEmulator
    from usage_engine import reset_components

    client_secret = f"bench-{os.urandom(8).hex()}"
    rows: list[list[str]] = []
    with (
        MotoServer() as aws,
        UsageEngineEmulator(clients={"bench": client_secret}, rate_limit=False) as emulator,
        contextlib.redirect_stdout(io.StringIO()),
    ):
        aws.reset()
        with environment({**aws.environment(), "POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "ERROR"}):
            resources = create_resources()
            endpoints = LocalEndpoints(
                emulator.token_url, emulator.audience, emulator.base_url, resources.dead_letter_queue_url
            )
            env = shared_environment(endpoints)
            env.pop("TOKEN_REFRESHER_FUNCTION")
            with environment(env):
                parts = reset_components()
                parts.secrets_manager().put_secret_value(
                    SecretId=CREDENTIALS_SECRET,
                    SecretString=json.dumps({"client_id": "bench", "client_secret": client_secret}),
                )
                for function in ("token_refresher", "meter_events", "meter_query"):
                    load_module(function)
                invoke("token_refresher", load_event("refresher-scheduled.json"))
                emulator.set_api_delay(API_DELAY_SECONDS)
                cases: list[tuple[str, str, float, Any, str]] = [
                    ("meter_query", "GET /users/{id}/meters", 4.0, load_event("meter-query-http-api.json"), "8 s"),
                    ("meter_events", "batch of 3 creates", 6.0, _batch(3), "48 s"),
                ]
                if not quick:
                    cases.append(("meter_events", "batch of 3 creates", 30.0, _batch(3), "more than 30 s: timed out"))
                for function, what, budget, event, before in cases:
                    context = LocalLambdaContext(function_name=function, timeout_seconds=budget)
                    started = time.monotonic()
                    result = invoke(function, event, context=context)
                    took = time.monotonic() - started
                    rows.append([f"{function}: {what}", f"{budget:g} s", _answer(result), f"{took:.1f} s", before])
    return rows


def _batch(count: int) -> dict[str, Any]:
    from local.lambda_runtime import load_event

    template = load_event("meter-events-sqs.json")["Records"][0]
    records = []
    for index in range(count):
        detail = {"domain": "bench", "externalRef": f"ref-{index}", "meterTypeId": "api-calls", "userId": "u-1"}
        body = {"detail-type": "Create Meter", "source": "bench", "time": "2026-12-01T00:00:00Z", "detail": detail}
        records.append({**template, "messageId": f"m-{index}", "body": json.dumps(body)})
    return {"Records": records}


def _answer(result: Any) -> str:
    if isinstance(result, dict) and "statusCode" in result:
        code = json.loads(result.get("body") or "{}").get("error", {}).get("code", "")
        return f"HTTP {result['statusCode']} {code}".strip()
    if isinstance(result, dict) and "batchItemFailures" in result:
        return f"{len(result['batchItemFailures'])} of 3 reported for retry"
    return str(result)[:60]


def _persistent_401() -> tuple[int, int]:
    """An hour in which a consumer reports every stored token as rejected every 10 s (a wrong audience), the
    schedule running every 5 minutes: IdP requests and new secret versions, on the real TokenRefresher."""
    from tests.unit.test_refresher_hour import persistent_401
    from tests.unit.test_refresher_world import World

    world = World()
    persistent_401(world, hours=1)
    return len(world.idp.requests), len(world.aws.token_puts)


def bench_semantics(quick: bool) -> Section:
    section = Section("7. Production semantics")
    deadline_rows = _handler_deadlines(quick)
    idp_requests, versions = _persistent_401()
    section.add(
        f"**Deadlines.** The Usage Engine API answers every request after {API_DELAY_SECONDS:g} s (longer than "
        "the budget); each handler is invoked as Lambda invokes it with the budget as its remaining time. "
        "Previous release: measured on it under the same conditions.",
        "",
        *table(["handler", "budget", "answer", "answered after", "previous release"], deadline_rows),
        "",
        "**Rejections.** A persistent 401 (the API rejects every token; a consumer reports each one every 10 s; "
        "schedule every 5 minutes), one hour on a virtual clock against the real `TokenRefresher`:",
        "",
        *table(
            ["", "IdP requests", "new token secret versions"],
            [["this release", str(idp_requests), str(versions)], ["previous release", "60", "60"]],
        ),
        "",
        "The IdP-outage figures (secret reads per 1,000 invocations with an expired token) are in section 6.",
        "",
    )
    budgets = [float(row[1].rstrip(" s")) for row in deadline_rows]
    answered = [float(row[3].rstrip(" s")) for row in deadline_rows]
    section.targets.append(
        Target(
            "every handler answers within its budget against a slower API",
            ", ".join(f"{took:.1f} s of {budget:g} s" for took, budget in zip(answered, budgets, strict=True)),
            all(took < budget for took, budget in zip(answered, budgets, strict=True)),
        )
    )
    section.targets.append(
        Target(
            "an hour of continuous rejections: at most 8 IdP requests and 8 versions",
            f"{idp_requests} and {versions} (previous release: 60 and 60)",
            idp_requests <= 8 and versions <= 8,
        )
    )
    return section
