"""A 401 storm with real parts: threads as containers, against moto, the Usage Engine emulator and the local
Lambda endpoint running the refresher handler with reserved concurrency 1 (the last row of section 3)."""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from dataclasses import dataclass

from benchmarks.harness import environment

REFRESHER = "token-refresher"


@dataclass(frozen=True)
class RealStorm:
    idp_requests: int
    secrets_reads: int
    ok: int
    failed: int
    throttled_invokes: int
    refresher_runs: int
    seconds: float


def real_storm(containers: int) -> RealStorm:
    """`containers` threads, each its own container (one `Components`: boto3 clients, TokenProvider, session)."""
    import time_machine

    from local.lambda_endpoint import LocalLambdaEndpoint
    from local.lambda_runtime import invoke, load_event, load_module
    from local.moto_server import MotoServer
    from local.resources import CREDENTIALS_SECRET, TOKEN_SECRET, create_resources
    from local.usage_engine_emulator import UsageEngineEmulator
    from usage_engine import Components, ConsumerSettings, UsageEngineClient, UsageEngineError, reset_components
    from usage_engine.metering import METERS_PATH

    client_secret = f"bench-{os.urandom(8).hex()}"
    with (
        MotoServer() as aws,
        UsageEngineEmulator(clients={"bench": client_secret}, rate_limit=True) as emulator,
        LocalLambdaEndpoint({REFRESHER: "token_refresher"}, reserved_concurrency={REFRESHER: 1}) as fn,
        environment(
            {
                **aws.environment(),
                **fn.environment(),
                "CREDENTIALS_SECRET_ID": CREDENTIALS_SECRET,
                "TOKEN_SECRET_ID": TOKEN_SECRET,
                "USAGE_ENGINE_TOKEN_URL": emulator.token_url,
                "USAGE_ENGINE_AUDIENCE": emulator.audience,
                "USAGE_ENGINE_API_URL": emulator.base_url,
                "POWERTOOLS_TRACE_DISABLED": "true",
                "POWERTOOLS_LOG_LEVEL": "ERROR",
                "LOG_LEVEL": "ERROR",
                "POWERTOOLS_METRICS_DISABLED": "true",
            }
        ),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        aws.reset()
        # The refresher handler runs in this process: a fresh container for it, with clients for this moto server.
        setup = reset_components()
        create_resources(with_events=False)
        setup.secrets_manager().put_secret_value(
            SecretId=CREDENTIALS_SECRET, SecretString=f'{{"client_id": "bench", "client_secret": "{client_secret}"}}'
        )
        load_module("token_refresher")
        invoke("token_refresher", load_event("refresher-scheduled.json"))
        settings = ConsumerSettings(
            token_secret_id=TOKEN_SECRET, api_url=emulator.base_url, refresher_function=REFRESHER
        )
        clients = [Components().client(settings) for _ in range(containers)]
        for client in clients:
            client.request("GET", METERS_PATH)
        # Counted from the revocation on, as the simulated storms count.
        idp_before, reads_before = emulator.token_requests, aws.calls("GetSecretValue")
        runs_before, throttles_before = fn.invocations(REFRESHER), fn.throttles(REFRESHER)
        outcomes: list[str] = []
        # Five minutes on, as a revocation between two scheduled refreshes would be.
        with time_machine.travel(time.time() + 300, tick=True):
            emulator.revoke_all_tokens()
            barrier = threading.Barrier(containers)

            def call(client: UsageEngineClient) -> None:
                barrier.wait()
                try:
                    outcomes.append(str(client.request("GET", METERS_PATH).status_code))
                except UsageEngineError as error:
                    outcomes.append(type(error).__name__)

            threads = [threading.Thread(target=call, args=(c,)) for c in clients]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
            elapsed = time.perf_counter() - started
        return RealStorm(
            idp_requests=emulator.token_requests - idp_before,
            secrets_reads=aws.calls("GetSecretValue") - reads_before,
            ok=outcomes.count("200"),
            failed=len(outcomes) - outcomes.count("200"),
            throttled_invokes=fn.throttles(REFRESHER) - throttles_before,
            refresher_runs=fn.invocations(REFRESHER) - runs_before,
            seconds=elapsed,
        )
