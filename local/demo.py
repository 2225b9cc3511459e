"""`make demo`: the whole token flow on one machine, against moto's server and the Usage Engine emulator.

Nothing here talks to AWS or DigitalRoute: boto3 reaches moto over HTTP via AWS_ENDPOINT_URL, and the
handlers call the emulator's token endpoint and Usage Metering API on 127.0.0.1. The refresher handler
is invoked exactly as the scheduler would invoke it, with the files in events/.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import boto3
import requests
import time_machine

from local.environment import scoped_environment
from local.example_stack import run_example
from local.lambda_endpoint import LocalLambdaEndpoint
from local.lambda_runtime import invoke, load_event, load_module
from local.moto_server import MotoServer
from local.resources import create_resources, publish_meter_events
from local.sqs_event_source import SqsEventSource
from local.stack import REFRESHER_FUNCTION, LocalEndpoints, shared_environment
from local.usage_engine_emulator import UsageEngineEmulator
from usage_engine import (
    Components,
    ConsumerSettings,
    TokenProvider,
    UsageEngineClient,
    UsageEngineError,
    UsageMeteringApi,
)
from usage_engine.metering import METERS_PATH
from usage_engine.settings import consumer_variables

CLIENT_ID = "demo-application"
REFRESHER = REFRESHER_FUNCTION
# The second stack: the same bundle deployed again, for another tenant (here: a US one), with its own secrets.
US_CLIENT_ID = "demo-application-us"
US_CREDENTIALS_SECRET = "usage-engine-us/credentials"
US_TOKEN_SECRET = "usage-engine-us/token"


@dataclass
class DemoReport:
    """What the demo did, for its own leak check and for tests."""

    output: str = ""
    client_secret: str = ""
    second_client_secret: str = ""
    issued_tokens: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)


class Story:
    """Numbered, readable lines; everything printed is kept for the final leak check."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._text = io.StringIO()
        self._step = 0

    def step(self, title: str) -> None:
        self._step += 1
        self.say(f"\n{self._step}. {title}")

    def say(self, line: str = "") -> None:
        print(line, file=self._out)
        print(line, file=self._text)

    @property
    def text(self) -> str:
        return self._text.getvalue()


def when(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%H:%M:%S UTC")


class FunctionOutput:
    """Collects what a handler prints (Powertools JSON logs, EMF metrics) to retell it briefly."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        with contextlib.redirect_stdout(self.buffer):
            yield

    def drain(self) -> list[dict[str, Any]]:
        lines = [json.loads(x) for x in self.buffer.getvalue().splitlines() if x.startswith("{")]
        self.buffer.seek(0)
        self.buffer.truncate()
        return lines


def retell(story: Story, lines: list[dict[str, Any]]) -> None:
    for line in lines:
        if "_aws" in line:
            names = [m["Name"] for d in line["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]]
            values = ", ".join(f"{n}={_total(line[n])}" for n in names)
            story.say(f"   metrics (EMF): {values}")
        else:
            keys = ("reason", "action", "token_fingerprint", "idp_attempts", "error")
            fields = {k: line[k] for k in keys if k in line}
            story.say(f"   log {line['level']}: {line['message']} {json.dumps(fields)}")


def _total(value: Any) -> Any:
    # EMF lists every value a metric got in one invocation; the story tells their sum.
    value = sum(value) if isinstance(value, list) else value
    return int(value) if isinstance(value, float) and value.is_integer() else round(value, 1)


def run(out: TextIO = sys.stdout) -> DemoReport:
    report = DemoReport(client_secret=secrets.token_urlsafe(24), second_client_secret=secrets.token_urlsafe(24))
    story = Story(out)
    story.say("Usage Engine token bundle: local demo (moto server + Usage Engine emulator, no AWS, no internet)")
    with (
        MotoServer() as aws,
        UsageEngineEmulator(
            clients={CLIENT_ID: report.client_secret}, on_token_issued=report.issued_tokens.append
        ) as usage_engine,
        LocalLambdaEndpoint({REFRESHER: "token_refresher"}, reserved_concurrency={REFRESHER: 1}) as lambdas,
        # One virtual clock for the whole story, moved forward where the story says "minutes later".
        time_machine.travel(time.time(), tick=True) as clock,
    ):
        os.environ.update(aws.environment())
        os.environ.update(lambdas.environment())
        story.say(f"   AWS (moto server):            {aws.endpoint_url}")
        story.say(f"   Usage Engine emulator:        {usage_engine.base_url}")
        story.say(f"   Lambda Invoke API (refresher): {lambdas.endpoint_url}")

        story.step("The stack's resources exist (as template.yaml creates them); an operator stores the credentials")
        # With the API URL: the bundle's published parameters (/usage-engine/<stack>/...) exist too.
        resources = create_resources(api_url=usage_engine.base_url)
        # The functions' environment as template.yaml defines it, pointed at the emulators.
        endpoints = LocalEndpoints(
            usage_engine.token_url, usage_engine.audience, usage_engine.base_url, resources.dead_letter_queue_url
        )
        os.environ.update(shared_environment(endpoints))
        sm = boto3.client("secretsmanager")
        sm.put_secret_value(
            SecretId=resources.credentials_secret,
            SecretString=json.dumps({"clientId": CLIENT_ID, "clientSecret": report.client_secret}),
        )
        story.say(f"   {resources.credentials_secret}: client id {CLIENT_ID!r}, client secret stored (not shown)")
        story.say(
            f"   {resources.token_secret}: empty; event bus {resources.event_bus!r} -> rule -> SQS -> meter_events"
        )

        output = FunctionOutput()
        with output.capture():
            for function in ("token_refresher", "meter_events", "meter_query"):
                load_module(function)  # their Loggers write where this demo can read them

        def call(function: str, event: Any, label: str) -> Any:
            with output.capture():
                result = invoke(function, event)
            story.say(f"   invoke {function} with {label}")
            retell(story, output.drain())
            return result

        def refresher(event_file: str) -> dict[str, Any]:
            result = dict(call("token_refresher", load_event(event_file), f"events/{event_file}"))
            story.say(f"   -> {json.dumps(result)}")
            return result

        def versions() -> int:
            return len(sm.list_secret_version_ids(SecretId=resources.token_secret)["Versions"])

        story.step("Scheduled run: no token stored yet, so the refresher asks the IdP for one")
        first = refresher("refresher-scheduled.json")
        story.say(
            f"   token expires at {when(first['expires_at'])}; IdP requests: {usage_engine.token_requests}; "
            f"token secret versions: {versions()}"
        )

        story.step("Next scheduled run, 5 minutes later: the stored token is fresh, so no IdP call")
        clock.shift(5 * 60)
        second = refresher("refresher-scheduled.json")
        story.say(f"   IdP requests: {usage_engine.token_requests}; token secret versions: {versions()}")

        story.step("41 minutes after the first token: 19 minutes left, inside the 20-minute margin: refresh")
        clock.shift(36 * 60)
        third = refresher("refresher-scheduled.json")
        story.say(
            f"   new token expires at {when(third['expires_at'])}; IdP requests: "
            f"{usage_engine.token_requests}; token secret versions: {versions()}"
        )

        story.step("A consumer reads the token through the layer's TokenProvider and calls the Usage Metering API")
        token = TokenProvider.from_env().get()
        response = requests.get(
            usage_engine.base_url + METERS_PATH,
            headers={"Authorization": token.authorization},
            timeout=5,
        )
        story.say(
            f"   GET {METERS_PATH} with token {token.fingerprint} -> HTTP {response.status_code}, "
            f"{len(response.json().get('meters', []))} meters"
        )

        story.step("An upstream system publishes 4 meter events on the bus (one of them malformed)")
        publish_meter_events(
            resources.event_bus,
            [
                ("Create Meter", _create("user-42-api-calls", "user-42", "api-calls")),
                ("Create Meter", _create("user-42-storage", "user-42", "storage-gb")),
                ("Create Meter", _create("user-7-api-calls", "user-7", "api-calls")),
                ("Create Meter", {"domain": "acme", "externalRef": "no-user", "meterTypeId": "api-calls"}),
            ],
        )
        source = SqsEventSource(resources.queue_url, resources.queue_arn, "meter_events")
        messages: list[dict[str, Any]] = []
        for _ in range(10):
            messages += source.receive()
            if len(messages) >= 4:
                break
        with output.capture():
            batch = source.deliver(messages)
        story.say(
            f"   SQS delivered a batch of {len(batch.received)} to meter_events (as the event source mapping does)"
        )
        retell(story, output.drain())
        dlq = boto3.client("sqs").receive_message(
            QueueUrl=resources.dead_letter_queue_url, MessageAttributeNames=["All"], MaxNumberOfMessages=10
        )
        dead = dlq.get("Messages", [])
        story.say(
            f"   applied: {len(batch.succeeded) - len(dead)}, retried: {len(batch.failed)}, dead-lettered: {len(dead)}"
            + (f" (reason: {dead[0]['MessageAttributes']['reason']['StringValue']})" if dead else "")
        )
        story.say(f"   meters in the Usage Engine: {len(usage_engine.meters)}")

        story.step("The same batch is delivered again (SQS is at-least-once): no duplicate meters")
        with output.capture():
            redelivered = invoke("meter_events", {"Records": [source._record(m) for m in messages]})
        output.drain()
        story.say(
            f"   batchItemFailures: {len(redelivered['batchItemFailures'])}; "
            f"meters in the Usage Engine: {len(usage_engine.meters)}"
        )

        story.step("GET /users/user-42/meters through the IAM-authorised HTTP API (meter_query)")
        query = call("meter_query", load_event("meter-query-http-api.json"), "events/meter-query-http-api.json")
        body = json.loads(query["body"])
        story.say(
            f"   -> HTTP {query['statusCode']}: {len(body['meters'])} meters for {body['userId']}: "
            + ", ".join(m["externalRef"] for m in body["meters"])
        )

        story.step("A consumer in a stack of its own (examples/consumer) takes everything from the bundle's parameters")
        example = run_example({"userId": "user-42"})
        story.say(f"   {example.summary}")

        story.step("10 minutes later the Usage Engine revokes every token; 10 containers call the API at once")
        clock.shift(10 * 60)
        before = usage_engine.token_requests
        usage_engine.revoke_all_tokens()
        statuses: list[int | str] = []
        threads = [threading.Thread(target=lambda: statuses.append(_container_call())) for _ in range(10)]
        with output.capture():
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            after_query = invoke("meter_query", load_event("meter-query-http-api.json"))
        refresher_runs = [line for line in output.drain() if line.get("message", "").startswith("Token refresh")]
        outcomes = Counter(str(line.get("reason")) for line in refresher_runs)
        new_requests = usage_engine.token_requests - before
        story.say(
            f"   each got 401, dropped that token, re-read the secret and asked the refresher: it ran "
            f"{len(refresher_runs)} times ({', '.join(f'{k}: {v}' for k, v in sorted(outcomes.items()))}), "
            f"{lambdas.throttles(REFRESHER)} invokes were throttled (reserved concurrency 1) and re-read instead"
        )
        story.say(
            f"   results: {statuses.count(200)}/10 containers got HTTP 200; meter_query -> HTTP "
            f"{after_query['statusCode']}; new IdP requests: {new_requests}"
        )

        story.step("A second stack beside the first (another tenant), and one consumer using both connections")
        two_connections = _second_stack(story, call, usage_engine, report)

        ok = (
            first["refreshed"]
            and not second["refreshed"]
            and third["refreshed"]
            and response.status_code == 200
            and len(dead) == 1
            and len(usage_engine.meters) == 3
            and not redelivered["batchItemFailures"]
            and query["statusCode"] == 200
            and example.result == {"userId": "user-42", "meterCount": 2}
            and statuses == [200] * 10
            and after_query["statusCode"] == 200
            and new_requests == 1
        )
        story.step("Summary")
        story.say(
            "   refresh -> skip -> refresh, events -> meters, revoke -> recover with one IdP request: "
            + ("yes" if ok else "NO")
        )
        story.say(
            "   a consumer outside the bundle's template, configured from its published parameters: "
            + ("yes" if example.result == {"userId": "user-42", "meterCount": 2} else "NO")
        )
        story.say(
            "   one consumer, two connections, each call with its own tenant's token: "
            + ("yes" if two_connections else "NO")
        )
        story.say(
            f"   first stack: IdP token requests: {usage_engine.token_requests}; "
            f"API requests: {usage_engine.api_requests}"
        )
        story.say(
            f"   Secrets Manager: GetSecretValue {aws.calls('GetSecretValue')}, "
            f"PutSecretValue {aws.calls('PutSecretValue')}"
        )

    report.output = story.text
    secrets_seen = [report.client_secret, report.second_client_secret, *report.issued_tokens]
    report.leaks = [f"value #{i}" for i, value in enumerate(secrets_seen) if value in report.output]
    if not (ok and two_connections):
        report.leaks.append("the story did not go as expected")
    story.say(
        f"   secrets in this output: {'none' if not report.leaks else ', '.join(report.leaks)} "
        f"(checked both client secrets and {len(report.issued_tokens)} issued tokens)"
    )
    return report


def _second_stack(
    story: Story, call: Callable[[str, Any, str], Any], eu_engine: UsageEngineEmulator, report: DemoReport
) -> bool:
    """The bundle deployed a second time for another tenant: its own secrets, its own Usage Engine (here a second
    emulator) and its own refresher run; then one consumer calls both through two connections of the layer."""
    with UsageEngineEmulator(
        clients={US_CLIENT_ID: report.second_client_secret}, on_token_issued=report.issued_tokens.append
    ) as us_engine:
        sm = boto3.client("secretsmanager")
        sm.create_secret(
            Name=US_CREDENTIALS_SECRET,
            SecretString=json.dumps({"clientId": US_CLIENT_ID, "clientSecret": report.second_client_secret}),
        )
        sm.create_secret(Name=US_TOKEN_SECRET, Description="Usage Engine access token (US tenant)")
        story.say(f"   second Usage Engine emulator (US tenant): {us_engine.base_url}")
        story.say(f"   {US_CREDENTIALS_SECRET}: client id {US_CLIENT_ID!r}, client secret stored (not shown)")
        # The second stack's refresher is the same function with its own stack's environment.
        us_refresher = {
            "CREDENTIALS_SECRET_ID": US_CREDENTIALS_SECRET,
            "TOKEN_SECRET_ID": US_TOKEN_SECRET,
            "USAGE_ENGINE_TOKEN_URL": us_engine.token_url,
            "USAGE_ENGINE_AUDIENCE": us_engine.audience,
        }
        with scoped_environment(us_refresher):
            refreshed = call("token_refresher", load_event("refresher-scheduled.json"), "the US stack's environment")
        story.say(f"   -> {json.dumps(refreshed)}")

        # The consumer keeps its default connection (the first stack) and adds the "us" one.
        us = consumer_variables("us")
        os.environ[us.token_secret_id] = US_TOKEN_SECRET
        os.environ[us.api_url] = us_engine.base_url
        story.say(
            f"   consumer environment adds: {us.token_secret_id}={US_TOKEN_SECRET}, {us.api_url}={us_engine.base_url}"
        )
        eu_before = eu_engine.api_status_counts
        tokens_seen = []
        for connection, code in ((None, "UsageEngineClient.from_env()"), ("us", 'UsageEngineClient.from_env("us")')):
            client = UsageEngineClient.from_env(connection)
            meters = UsageMeteringApi(client).list_meters()
            token = client.tokens.peek()
            tokens_seen.append(token is not None)
            story.say(
                f"   {code + ':':<33} GET {METERS_PATH} on {client.base_url} with token "
                f"{token.fingerprint if token else '-'} -> {len(meters)} meters"
            )
        eu_new = _new(eu_before, eu_engine.api_status_counts)
        story.say(
            f"   IdP requests: EU {eu_engine.token_requests}, US {us_engine.token_requests}; answers to these calls: "
            f"EU {_statuses(eu_new)}, US {_statuses(us_engine.api_status_counts)} (each API got its tenant's token)"
        )
        return (
            bool(refreshed["refreshed"])
            and all(tokens_seen)
            and us_engine.token_requests == 1
            and us_engine.api_status_counts == {200: 1}
            and eu_new == {200: 1}
            and UsageEngineClient.from_env("us").tokens is not UsageEngineClient.from_env().tokens
        )


def _new(before: Mapping[int, int], after: Mapping[int, int]) -> dict[int, int]:
    return {status: count - before.get(status, 0) for status, count in after.items() if count != before.get(status, 0)}


def _statuses(counts: Mapping[int, int]) -> str:
    return ", ".join(f"{count} x HTTP {status}" for status, count in sorted(counts.items())) or "none"


def _create(ref: str, user: str, meter_type: str) -> dict[str, Any]:
    return {"domain": "acme", "externalRef": ref, "meterTypeId": meter_type, "userId": user}


def _container_call() -> int | str:
    """One more Lambda container: its own boto3 clients, token cache and HTTP session."""
    client = Components().client(ConsumerSettings.from_env())
    try:
        return client.request("GET", METERS_PATH).status_code
    except UsageEngineError as error:
        return type(error).__name__


def main() -> int:
    report = run()
    return 1 if report.leaks else 0


if __name__ == "__main__":
    sys.exit(main())
