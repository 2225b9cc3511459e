"""A cold start's imports happen at import time, not in the first invocation: the layer's lazy public names
must not push the work of a handler's first call past its init (where Lambda runs it before the first request,
and where the cold-start benchmark measures it).

Each handler runs in a fresh interpreter, as in a new Lambda container: import the module, note the modules
loaded, invoke it once with its events/ file against the local stack, and list what the invocation loaded
that the import had not, among the layer and its dependencies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from local.lambda_runtime import EVENTS, FUNCTIONS, LAYER_PATH, invoke, load_event
from local.stack import timeout_of
from tests.conftest import Deployment

# The layer and what it ships; botocore (the runtime's) loads service-specific modules on client creation
# whoever creates the client, so it is not counted.
WATCHED = ("usage_engine", "aws_lambda_powertools", "requests", "idna", "certifi", "typing_extensions")

CHILD = r"""
import importlib.util, json, sys, time
layer, app_path, event_path, timeout = sys.argv[1:5]
sys.path.insert(0, layer)
spec = importlib.util.spec_from_file_location("app", app_path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
before = set(sys.modules)

class Context:
    function_name = "cold"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:cold"
    aws_request_id = "cold-start-check"
    log_group_name = "/aws/lambda/cold"
    log_stream_name = "local"
    function_version = "$LATEST"
    _started = time.monotonic()
    def get_remaining_time_in_millis(self):
        return int((float(timeout) - (time.monotonic() - self._started)) * 1000)

event = json.loads(open(event_path).read())
result = module.lambda_handler(event, Context())
loaded = sorted(set(sys.modules) - before)
print(json.dumps({"result": result, "loaded": loaded}))
"""

CASES = {
    "token_refresher": "refresher-scheduled.json",
    "meter_query": "meter-query-http-api.json",
    "meter_events": "meter-events-sqs.json",
}


def first_invocation(function: str) -> dict[str, Any]:
    result = subprocess.run(  # noqa: S603 - this interpreter, our own script
        [
            sys.executable,
            "-c",
            CHILD,
            str(LAYER_PATH),
            str(FUNCTIONS / function / "app.py"),
            str(EVENTS / CASES[function]),
            str(timeout_of(function)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


@pytest.mark.parametrize("function", sorted(CASES))
def test_the_first_invocation_loads_nothing_of_the_layer_that_the_import_did_not(
    consumers: Deployment, function: str
) -> None:
    invoke("token_refresher", load_event("refresher-scheduled.json"))  # a token in the secret, as when warm
    answer = first_invocation(function)
    # The invocation did its work (so its imports were exercised): a stored token, the meters, no failed record.
    if function == "meter_query":
        assert answer["result"]["statusCode"] == 200
    elif function == "meter_events":
        assert answer["result"]["batchItemFailures"] == []
    else:
        assert (answer["result"]["refreshed"], answer["result"]["reason"]) == (False, "fresh")
    late = [name for name in answer["loaded"] if name.split(".")[0] in WATCHED]
    assert late == []


def test_the_check_sees_a_module_loaded_late(consumers: Deployment, tmp_path: Path) -> None:
    # A handler that imports part of the layer inside its function is caught.
    app = tmp_path / "app.py"
    app.write_text(
        "def lambda_handler(event, context):\n"
        "    import usage_engine.meter_order  # noqa: F401\n"
        "    return {'reason': 'scheduled'}\n"
    )
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", CHILD, str(LAYER_PATH), str(app), str(EVENTS / CASES["token_refresher"]), "30"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        check=True,
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1])["loaded"]
    assert "usage_engine.meter_order" in loaded
