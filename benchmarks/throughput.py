"""Section 5: consumer throughput against the emulator, pooled session against a connection per request."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

from benchmarks.harness import environment
from benchmarks.report import Section, table

SECRET_ID = "bench/token"


def bench_throughput(quick: bool) -> Section:
    import requests

    from local.moto_server import MotoServer
    from local.usage_engine_emulator import UsageEngineEmulator
    from usage_engine import AccessToken, Components, ConsumerSettings, encode_token
    from usage_engine.metering import METERS_PATH

    section = Section("5. Consumer throughput against the emulator")
    seconds = 0.3 if quick else 1.5
    client_secret = f"bench-{os.urandom(8).hex()}"
    with (
        MotoServer() as aws,
        UsageEngineEmulator(clients={"bench": client_secret}, rate_limit=False) as emulator,
        environment(aws.environment()),
    ):
        aws.reset()
        answer = requests.post(
            emulator.token_url,
            data={
                "client_id": "bench",
                "client_secret": client_secret,
                "grant_type": "client_credentials",
                "audience": emulator.audience,
            },
            timeout=10,
        ).json()
        now = int(time.time())
        token = AccessToken(value=answer["access_token"], expires_at=now + 3600, issued_at=now)
        container = Components()
        container.secrets_manager().create_secret(Name=SECRET_ID, SecretString=encode_token(token))
        client = container.client(ConsumerSettings(token_secret_id=SECRET_ID, api_url=emulator.base_url))
        url = emulator.base_url + METERS_PATH
        headers = {"Authorization": token.authorization}

        def rate(call: Callable[[], object]) -> float:
            for _ in range(20):
                call()
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                call()
                count += 1
            return count / (time.perf_counter() - started)

        session = requests.Session()
        runs: dict[str, list[float]] = {"shared": [], "fresh": [], "bare": []}
        for _ in range(3):  # interleaved rounds, the median of each
            runs["shared"].append(rate(lambda: client.request("GET", METERS_PATH)))
            runs["fresh"].append(
                rate(lambda: requests.get(url, headers=headers, timeout=(3.05, 10)).raise_for_status())
            )
            runs["bare"].append(rate(lambda: session.get(url, headers=headers, timeout=(3.05, 10)).raise_for_status()))
        shared, fresh, bare = (statistics.median(runs[name]) for name in ("shared", "fresh", "bare"))
    rows = [
        ["`UsageEngineClient` (shared session: pooled keep-alive connection)", f"{shared:,.0f}", "1.00"],
        ["new connection per request (`requests.get`)", f"{fresh:,.0f}", f"{fresh / shared:.2f}"],
        ["bare shared `requests.Session` (no token provider, no retries)", f"{bare:,.0f}", f"{bare / shared:.2f}"],
    ]
    section.add(
        f"One thread, `GET {METERS_PATH}` for 3 interleaved rounds of {seconds:g} s each (median) against the "
        "emulator on loopback (plain HTTP: a real TLS handshake to the Usage Engine would widen the gap, roughly "
        "one extra round trip plus the handshake per request).",
        "",
        *table(["client", "requests/s", "x shared session"], rows),
    )
    return section
