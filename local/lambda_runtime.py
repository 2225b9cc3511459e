"""Invoke a handler the way the Lambda runtime does: load `app.py` by path, JSON in, JSON out, a context."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from local.template import REGION

ROOT = Path(__file__).resolve().parent.parent
LAYER_PATH = ROOT / "layers" / "usage_engine"
FUNCTIONS = ROOT / "functions"
EVENTS = ROOT / "events"

Handler = Callable[[Any, Any], Any]


@dataclass
class LocalLambdaContext:
    """The attributes of the runtime's context object that Powertools and the handlers read."""

    function_name: str
    memory_limit_in_mb: int = 256
    timeout_seconds: float = 120.0
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    _started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:123456789012:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return f"local/{self.aws_request_id}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_seconds - (time.monotonic() - self._started)) * 1000))


def load_module(function: str) -> ModuleType:
    """Import functions/<function>/app.py under a unique module name (every function's module is `app`)."""
    if str(LAYER_PATH) not in sys.path:
        # In Lambda the layer is on the path as /opt/python.
        sys.path.insert(0, str(LAYER_PATH))
    name = f"lambda_function_{function}"
    if name in sys.modules:
        return sys.modules[name]
    path = FUNCTIONS / function / "app.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        # A half-initialised module must not be served to the next caller.
        del sys.modules[name]
        raise
    return module


def load_event(name: str) -> Any:
    return json.loads((EVENTS / name).read_text())


def invoke(function: str, event: Any, *, context: LocalLambdaContext | None = None) -> Any:
    """Run one invocation: the event and the result cross a JSON boundary, as they do in Lambda."""
    handler: Handler = load_module(function).lambda_handler
    payload = json.loads(json.dumps(event))
    if context is None:
        # The function's own timeout from template.yaml: handlers bound their waits by what it leaves.
        from local.stack import timeout_of  # deferred: it reads the template with a dev tool

        context = LocalLambdaContext(function_name=function, timeout_seconds=timeout_of(function))
    result = handler(payload, context)
    return json.loads(json.dumps(result))
