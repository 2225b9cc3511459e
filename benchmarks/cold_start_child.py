"""One cold start, run by Lambda's Python in a fresh process (section 4): import a handler, then invoke it once.

    python cold_start_child.py TARGET EVENT_FILE TIMEOUT_S EXPECT PATH...

TARGET is `app` (the handler module, found in the first PATH as Lambda finds it in /var/task) or `boto3` (the
baseline: imported, nothing invoked). The last line printed is `COLD_START {"import_s", "invoke_s", "ok",
"error"}`; everything before it is the handler's own output (its logs go to stdout, as in Lambda).

Standard library only, and nothing imported before the timed import that Lambda's bootstrap would not have
imported (not even `typing`): the handler pays for everything it needs. The event and the context are made
after the import.
"""

from __future__ import annotations

import importlib
import os
import sys
import time

MARKER = "COLD_START "


class Context:
    """The attributes of the runtime's context object that Powertools and the handlers read."""

    def __init__(self, function_name: str, timeout_seconds: float) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 256
        self.invoked_function_arn = f"arn:aws:lambda:eu-west-1:123456789012:function:{function_name}"
        self.aws_request_id = "00000000-0000-4000-8000-00000000c01d"
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "bench/cold-start"
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def failure(result: object, expect: str) -> str:
    """Why `result` is not the answer `expect` names ("" when it is)."""
    if expect == "status-200":
        status = result.get("statusCode") if isinstance(result, dict) else None
        return "" if status == 200 else f"statusCode {status}"
    if expect == "no-batch-failures":
        failures = result.get("batchItemFailures") if isinstance(result, dict) else None
        return "" if failures == [] else f"batchItemFailures: {len(failures or [None])}"
    if expect == "not-refreshed":
        # A warm token: the refresher must only read it and decide there is nothing to do.
        refreshed = result.get("refreshed") if isinstance(result, dict) else None
        return "" if refreshed is False else f"refreshed: {refreshed}"
    return ""


def report(wall: list[float], cpu: list[float], error: str) -> None:
    """Wall-clock and CPU seconds of the import and of the invocation, as far as they went."""
    import json

    payload = {
        "import_s": wall[0] if wall else None,
        "invoke_s": wall[1] if len(wall) > 1 and not error else None,
        "import_cpu_s": cpu[0] if cpu else None,
        "invoke_cpu_s": cpu[1] if len(cpu) > 1 and not error else None,
        "ok": not error,
        "error": error,
    }
    print(MARKER + json.dumps(payload), flush=True)


def main(argv: list[str]) -> int:
    target, event_file, timeout, expect, *paths = argv
    # Lambda's order: the function, then the layer (/opt/python), then the runtime's packages. This script's own
    # folder and the interpreter's site-packages hold nothing Lambda would have.
    rest = [entry for entry in sys.path[1:] if not entry.endswith(("site-packages", "dist-packages"))]
    sys.path[:] = [*paths, *rest]
    wall: list[float] = []
    cpu: list[float] = []
    started, started_cpu = time.perf_counter(), time.process_time()
    try:
        module = importlib.import_module(target)
    except Exception as error:  # noqa: BLE001 - reported, never timed
        report([], [], f"import: {type(error).__name__}: {str(error)[:200]}")
        return 1
    wall.append(time.perf_counter() - started)
    cpu.append(time.process_time() - started_cpu)
    if target == "boto3":
        report(wall, cpu, "")
        return 0
    import json

    with open(event_file, encoding="utf-8") as source:
        event = json.load(source)
    context = Context(os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "bench"), float(timeout))
    started, started_cpu = time.perf_counter(), time.process_time()
    try:
        result = module.lambda_handler(event, context)
    except Exception as error:  # noqa: BLE001 - reported, never timed
        report(wall, cpu, f"invoke: {type(error).__name__}: {str(error)[:200]}")
        return 1
    wall.append(time.perf_counter() - started)
    cpu.append(time.process_time() - started_cpu)
    why = failure(result, expect)
    report(wall, cpu, why)
    return 0 if not why else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
