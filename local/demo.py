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
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import boto3
import requests
import time_machine

from local.lambda_runtime import invoke, load_event, load_module
from local.moto_server import MotoServer
from local.usage_engine_emulator import UsageEngineEmulator

CREDENTIALS_SECRET = "usage-engine/credentials"
TOKEN_SECRET = "usage-engine/token"
CLIENT_ID = "demo-application"


@dataclass
class DemoReport:
    """What the demo did, for its own leak check and for tests."""

    output: str = ""
    client_secret: str = ""
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
            values = ", ".join(f"{n}={_last(line[n])}" for n in names)
            story.say(f"   metrics (EMF): {values}")
        else:
            fields = {k: line[k] for k in ("reason", "token_fingerprint", "idp_attempts", "error") if k in line}
            story.say(f"   log {line['level']}: {line['message']} {json.dumps(fields)}")


def _last(value: Any) -> Any:
    value = value[-1] if isinstance(value, list) else value
    return int(value) if isinstance(value, float) and value.is_integer() else round(value, 1)


def run(out: TextIO = sys.stdout) -> DemoReport:
    report = DemoReport(client_secret=secrets.token_urlsafe(24))
    story = Story(out)
    story.say("Usage Engine token bundle: local demo (moto server + Usage Engine emulator, no AWS, no internet)")
    with (
        MotoServer() as aws,
        UsageEngineEmulator(
            clients={CLIENT_ID: report.client_secret}, on_token_issued=report.issued_tokens.append
        ) as usage_engine,
    ):
        os.environ.update(aws.environment())
        os.environ.update(
            {
                "CREDENTIALS_SECRET_ID": CREDENTIALS_SECRET,
                "TOKEN_SECRET_ID": TOKEN_SECRET,
                "USAGE_ENGINE_TOKEN_URL": usage_engine.token_url,
                "USAGE_ENGINE_AUDIENCE": usage_engine.audience,
                "USAGE_ENGINE_API_URL": usage_engine.base_url,
                "REFRESH_MARGIN_SECONDS": "1200",
                "POWERTOOLS_TRACE_DISABLED": "true",
            }
        )
        story.say(f"   AWS (moto server):           {aws.endpoint_url}")
        story.say(f"   Usage Engine emulator:        {usage_engine.base_url}")

        story.step(
            "The stack's two secrets exist, empty (as template.yaml creates them); an operator stores the credentials"
        )
        sm = boto3.client("secretsmanager")
        sm.create_secret(Name=CREDENTIALS_SECRET)
        sm.create_secret(Name=TOKEN_SECRET)
        sm.put_secret_value(
            SecretId=CREDENTIALS_SECRET,
            SecretString=json.dumps({"clientId": CLIENT_ID, "clientSecret": report.client_secret}),
        )
        story.say(f"   {CREDENTIALS_SECRET}: client id {CLIENT_ID!r}, client secret stored (not shown)")

        output = FunctionOutput()
        with output.capture():
            load_module("token_refresher")  # its Logger writes where this demo can read it

        def refresher(event_file: str) -> dict[str, Any]:
            with output.capture():
                result = invoke("token_refresher", load_event(event_file))
            story.say(f"   invoke TokenRefresher with events/{event_file} -> {json.dumps(result)}")
            retell(story, output.drain())
            return dict(result)

        def versions() -> int:
            return len(sm.list_secret_version_ids(SecretId=TOKEN_SECRET)["Versions"])

        story.step("Scheduled run: no token stored yet, so the refresher asks the IdP for one")
        first = refresher("refresher-scheduled.json")
        story.say(
            f"   token expires at {when(first['expires_at'])}; IdP requests so far: {usage_engine.token_requests}; "
            f"token secret versions: {versions()}"
        )

        story.step("Next scheduled run, 5 minutes later: the stored token is fresh, so no IdP call")
        with time_machine.travel(time.time() + 5 * 60, tick=True):
            second = refresher("refresher-scheduled.json")
        story.say(f"   IdP requests so far: {usage_engine.token_requests}; token secret versions: {versions()}")

        story.step("41 minutes after the first token: 19 minutes left, inside the 20-minute margin: refresh")
        with time_machine.travel(time.time() + 41 * 60, tick=True):
            third = refresher("refresher-scheduled.json")
        story.say(
            f"   new token expires at {when(third['expires_at'])}; IdP requests so far: "
            f"{usage_engine.token_requests}; token secret versions: {versions()}"
        )

        story.step("A consumer reads the token through the layer's TokenProvider and calls the Usage Metering API")
        from usage_engine import TokenProvider

        token = TokenProvider.from_env().get()
        response = requests.get(
            f"{usage_engine.base_url}/api/usage-metering/v1/meters",
            headers={"Authorization": token.authorization},
            timeout=5,
        )
        story.say(
            f"   GET /api/usage-metering/v1/meters with token {token.fingerprint} -> HTTP {response.status_code}, "
            f"{len(response.json().get('meters', []))} meters"
        )

        ok = (
            first["refreshed"]
            and not second["refreshed"]
            and third["refreshed"]
            and usage_engine.token_requests == 2
            and response.status_code == 200
        )
        story.step("Summary")
        story.say(f"   refresh -> skip -> refresh: {'yes' if ok else 'NO'}")
        story.say(f"   IdP token requests: {usage_engine.token_requests}; API requests: {usage_engine.api_requests}")

    report.output = story.text
    secrets_seen = [report.client_secret, *report.issued_tokens]
    report.leaks = [f"value #{i}" for i, value in enumerate(secrets_seen) if value in report.output]
    if not ok:
        report.leaks.append("the story did not go as expected")
    story.say(
        f"   secrets in this output: {'none' if not report.leaks else ', '.join(report.leaks)} "
        f"(checked the client secret and {len(report.issued_tokens)} issued tokens)"
    )
    return report


def main() -> int:
    report = run()
    return 1 if report.leaks else 0


if __name__ == "__main__":
    sys.exit(main())
