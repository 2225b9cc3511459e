"""Section 4's local stack: moto's server and the Usage Engine emulator on loopback, the stack's resources and
client credentials in them, and what each measured process gets (environment, event) to invoke a handler."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3

from benchmarks.cold_start_template import Shipped
from benchmarks.harness import ROOT, environment

if TYPE_CHECKING:
    from local.stack import LocalEndpoints

# What the Lambda runtime sets before the function's own variables.
LAMBDA_ENV = {
    "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
    "AWS_REGION": "eu-west-1",
    "AWS_DEFAULT_REGION": "eu-west-1",
    # Lambda cannot write bytecode next to /opt/python (read-only): nothing compiled is kept between cold starts.
    "PYTHONDONTWRITEBYTECODE": "1",
}
CLIENT_ID = "bench-cold-start"
EVENTS = ROOT / "events"
# The event each function's first invocation gets, and what its answer must be (benchmarks/cold_start_child.py).
EVENT_FILES = {
    "token_refresher": "refresher-scheduled.json",
    "meter_events": "meter-events-sqs.json",
    "meter_query": "meter-query-http-api.json",
}
EXPECT = {"token_refresher": "not-refreshed", "meter_events": "no-batch-failures", "meter_query": "status-200"}
# Lambda sets _X_AMZN_TRACE_ID per invocation, sampled with Tracing: Active: a tracer then records and emits
# segments (UDP to the X-Ray daemon's address, which nothing reads here), as a cold start's first invocation does.
TRACE_ROOT = "Root=1-6750a1b2-0123456789abcdef01234567;Parent=0123456789abcdef"


@dataclass(frozen=True)
class LocalStack:
    aws: dict[str, str]  # what points boto3 at moto's server
    endpoints: LocalEndpoints


@contextlib.contextmanager
def local_stack() -> Iterator[LocalStack]:
    """The emulators with the stack's resources and the client credentials stored; no token yet."""
    from local.moto_server import MotoServer
    from local.resources import create_resources
    from local.stack import LocalEndpoints
    from local.usage_engine_emulator import UsageEngineEmulator

    client_secret = secrets.token_urlsafe(24)
    with (
        MotoServer() as aws,
        UsageEngineEmulator(clients={CLIENT_ID: client_secret}) as usage_engine,
        environment(aws.environment()),
    ):
        aws.reset()  # moto's backends live in this process: other sections may have left resources
        resources = create_resources()
        boto3.client("secretsmanager").put_secret_value(
            SecretId=resources.credentials_secret,
            SecretString=json.dumps({"clientId": CLIENT_ID, "clientSecret": client_secret}),
        )
        endpoints = LocalEndpoints(
            usage_engine.token_url, usage_engine.audience, usage_engine.base_url, resources.dead_letter_queue_url
        )
        yield LocalStack(aws.environment(), endpoints)


def function_environment(stack: LocalStack, function: str, shipped: Shipped, task_root: Path) -> dict[str, str]:
    """What Lambda gives the function: the runtime's variables, then template.yaml's for it (pointed at the
    emulators), and the trace header its Tracing property makes."""
    from local.stack import environment_of

    values = {**LAMBDA_ENV, **stack.aws, **environment_of(function, stack.endpoints, template=shipped.template)}
    values.pop("POWERTOOLS_TRACE_DISABLED", None)  # the local stack's own default, not the template's
    sampled = shipped.property_of(function, "Tracing", "PassThrough") == "Active"
    values.update(
        {
            "LAMBDA_TASK_ROOT": str(task_root),
            "AWS_LAMBDA_FUNCTION_NAME": function,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(shipped.property_of(function, "MemorySize", 128)),
            "_X_AMZN_TRACE_ID": f"{TRACE_ROOT};Sampled={int(sampled)}",
        }
    )
    return values


def timeout_of(shipped: Shipped, function: str) -> float:
    return float(shipped.property_of(function, "Timeout", 3))


def event_file(function: str, run: int, scratch: Path) -> Path:
    """The event for run number `run`. Meter events get meter references and ids of their own per run, so every
    run creates, updates and deletes its own meters: each does the same work, whatever ran before."""
    source = EVENTS / EVENT_FILES[function]
    if function != "meter_events" or run < 0:
        return source
    event = json.loads(source.read_text())
    for index, record in enumerate(event["Records"]):
        body = json.loads(record["body"])
        body["id"] = f"00000000-0000-4000-8000-{run:08x}{index:04x}"
        detail = body["detail"]
        detail["externalRef"] = f"{detail['externalRef']}-run{run}"
        if "userId" in detail:
            # Not user-42: the meter query's answer stays the same size whatever the meter events created.
            detail["userId"] = f"bench-user-{run}"
        record["body"] = json.dumps(body)
        record["messageId"] = f"{record['messageId']}-run{run}"
    path = scratch / f"meter-events-{run}.json"
    path.write_text(json.dumps(event))
    return path
