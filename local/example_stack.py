"""The example consumer stack (examples/consumer) deployed against the local bundle and invoked, as AWS would.

What CloudFormation and Lambda do, emulated:

* parameters: each AWS::SSM::Parameter::Value<String> parameter names an SSM parameter (its default, or the
  override `bundle_parameter_overrides` makes for another bundle stack) and gets that parameter's value from
  SSM (moto), with CloudFormation's refusal when it does not exist; `{{resolve:ssm:...}}` references in the
  function's properties are resolved the same way;
* the function's environment, layers and policies: the example template evaluated (local.template) with
  those values; the layer must be the bundle's published one (the local layer's ARN stands for
  layers/usage_engine) and the managed policy must exist in IAM (moto);
* the invocation: a fresh Python interpreter with only the function's folder and the layer's folder on its
  path (Lambda's /var/task and /opt/python), the environment the template gives plus the runtime's
  (region, credentials, endpoints), and nothing of the bundle's functions or of this repository's local/.

`run_example()` is what `make demo` calls; `ExampleRun.summary` is its one-line report.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from local.resources import ACCOUNT_ID, BUNDLE_STACK_NAME, PARAMETER_PREFIX, local_layer_arn
from local.template import REGION, REPO_ROOT, Evaluator, function_environment, load_template

EXAMPLE_DIR = REPO_ROOT / "examples" / "consumer"
EXAMPLE_TEMPLATE = EXAMPLE_DIR / "template.yaml"
FUNCTION_ID = "ExampleConsumerFunction"
LAYER_PATH = REPO_ROOT / "layers" / "usage_engine"
# The example's own stack, beside the bundle's.
EXAMPLE_STACK_NAME = "usage-engine-example-consumer"
SSM_PARAMETER_TYPE = "AWS::SSM::Parameter::Value<String>"
# What the Lambda runtime gives a function to reach AWS (here: moto and the local Lambda endpoint).
RUNTIME_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_LAMBDA",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
# Seconds a fresh interpreter may take to start on top of the function's own timeout.
STARTUP_ALLOWANCE_SECONDS = 30.0
_DYNAMIC_REFERENCE = re.compile(r"\{\{resolve:ssm:([^}:]+)(?::\d+)?\}\}")


class ExampleDeployError(Exception):
    """What CloudFormation would refuse: a missing SSM parameter, a layer or policy that does not exist."""


@dataclass(frozen=True)
class ExampleDeployment:
    """The example function as CloudFormation would create it against the local bundle."""

    parameters: dict[str, str]
    # Parameter -> the SSM parameter name it was resolved from.
    ssm_names: dict[str, str]
    environment: dict[str, str]
    layers: list[str]
    policies: list[str]
    handler: str
    code_dir: Path
    timeout_seconds: float
    memory_mb: int


@dataclass(frozen=True)
class ExampleRun:
    deployment: ExampleDeployment
    event: dict[str, Any]
    result: Any
    # What the function printed (Powertools JSON logs, EMF metrics) and its interpreter's stderr.
    output: str
    # Modules of this repository outside the example and the layer that the invocation loaded: none expected.
    repository_modules: list[str]

    @property
    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.output.splitlines() if line.startswith("{")]

    @property
    def summary(self) -> str:
        bundle = {name.split("/")[2] for name in self.deployment.ssm_names.values()}
        return (
            f"example consumer (stack {EXAMPLE_STACK_NAME}, outside the bundle; {len(self.deployment.ssm_names)} "
            f"values from /usage-engine/{','.join(sorted(bundle))}/, fresh interpreter): "
            f"{json.dumps(self.event)} -> {json.dumps(self.result)}"
        )


def bundle_parameter_overrides(
    bundle_stack: str, template: dict[str, Any] | None = None, *, default_stack: str = BUNDLE_STACK_NAME
) -> dict[str, str]:
    """The parameter overrides for a bundle stack named `bundle_stack`: every SSM-typed parameter's default
    with the bundle's stack name replaced (what examples/consumer/Makefile's `deploy BUNDLE_STACK=` passes)."""
    template = load_template(EXAMPLE_TEMPLATE) if template is None else template
    default_prefix = f"{PARAMETER_PREFIX}{default_stack}/"
    overrides = {}
    for name, parameter in template["Parameters"].items():
        default = str(parameter.get("Default", ""))
        if parameter["Type"] == SSM_PARAMETER_TYPE and default.startswith(default_prefix):
            overrides[name] = f"{PARAMETER_PREFIX}{bundle_stack}/{default.removeprefix(default_prefix)}"
    return overrides


def deploy_example(
    *, bundle_stack: str = BUNDLE_STACK_NAME, overrides: Mapping[str, str] | None = None
) -> ExampleDeployment:
    """The example function as CloudFormation would deploy examples/consumer/template.yaml here."""
    template = load_template(EXAMPLE_TEMPLATE)
    given = {**bundle_parameter_overrides(bundle_stack, template), **(overrides or {})}
    ssm = boto3.client("ssm")
    parameters: dict[str, str] = {}
    ssm_names: dict[str, str] = {}
    for name, parameter in template["Parameters"].items():
        value = given.get(name, str(parameter.get("Default", "")))
        if parameter["Type"] == SSM_PARAMETER_TYPE:
            ssm_names[name] = value
            value = _ssm_value(ssm, value, f"parameter {name}")
        parameters[name] = value
    evaluator = Evaluator(
        template,
        parameters,
        resources={"ExampleConsumerLogGroup": f"/aws/lambda/{EXAMPLE_STACK_NAME}/example-consumer"},
        region=REGION,
        stack_name=EXAMPLE_STACK_NAME,
    )
    properties = template["Resources"][FUNCTION_ID]["Properties"]
    environment = {
        name: _resolve_dynamic(ssm, value)
        for name, value in function_environment(template, FUNCTION_ID, evaluator).items()
    }
    layers = [_resolve_dynamic(ssm, str(arn)) for arn in evaluator.resolve(properties.get("Layers", []))]
    policies = [_resolve_dynamic(ssm, str(arn)) for arn in evaluator.resolve(properties.get("Policies", []))]
    _check_layers(layers, bundle_stack)
    _check_policies(policies)
    return ExampleDeployment(
        parameters=parameters,
        ssm_names=ssm_names,
        environment=environment,
        layers=layers,
        policies=policies,
        handler=str(properties["Handler"]),
        code_dir=EXAMPLE_DIR / str(properties["CodeUri"]),
        timeout_seconds=float(evaluator.resolve(properties.get("Timeout", 3))),
        memory_mb=int(evaluator.resolve(properties.get("MemorySize", 128))),
    )


def run_example(
    event: Mapping[str, Any] | None = None,
    *,
    bundle_stack: str = BUNDLE_STACK_NAME,
    overrides: Mapping[str, str] | None = None,
    runtime_environment: Mapping[str, str] | None = None,
) -> ExampleRun:
    """Deploy the example against the local bundle and invoke it once in a fresh interpreter.

    `runtime_environment`: what the runtime gives the function to reach AWS (default: this process's
    AWS_ENDPOINT_URL*, credentials); the region is the local stack's. AWS_ENDPOINT_URL must be loopback (moto),
    and AWS_ENDPOINT_URL_LAMBDA the local Lambda endpoint serving the refresher for a 401 to heal.
    """
    source = os.environ if runtime_environment is None else runtime_environment
    if not source.get("AWS_ENDPOINT_URL", "").startswith(("http://127.0.0.1:", "http://localhost:")):
        # Without it the function's boto3 would reach AWS itself.
        raise ValueError("the example runs against the local stack: AWS_ENDPOINT_URL must name moto on loopback")
    deployment = deploy_example(bundle_stack=bundle_stack, overrides=overrides)
    event = dict(event if event is not None else {"userId": "user-42"})
    environment = {
        "PATH": os.environ.get("PATH", ""),
        # Lambda's /var/task, then the layer's /opt/python; nothing else of this repository.
        "PYTHONPATH": os.pathsep.join([str(deployment.code_dir), str(LAYER_PATH)]),
        "PYTHONDONTWRITEBYTECODE": "1",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        # No configuration files: a function has none.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_LAMBDA_FUNCTION_NAME": f"{EXAMPLE_STACK_NAME}-{FUNCTION_ID}",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(deployment.memory_mb),
        **{name: source[name] for name in RUNTIME_VARIABLES if name in source},
        **deployment.environment,
    }
    with tempfile.TemporaryDirectory(prefix="example-consumer-") as scratch:
        result_file = Path(scratch) / "result.json"
        completed = subprocess.run(  # noqa: S603 - this interpreter, a fixed script, arguments of our own
            [
                sys.executable,
                "-c",
                _CHILD,
                deployment.handler,
                json.dumps(event),
                str(deployment.timeout_seconds),
                str(deployment.memory_mb),
                str(result_file),
                str(REPO_ROOT),
                f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{EXAMPLE_STACK_NAME}-{FUNCTION_ID}",
            ],
            cwd=scratch,
            env=environment,
            capture_output=True,
            text=True,
            timeout=deployment.timeout_seconds + STARTUP_ALLOWANCE_SECONDS,
            check=False,
        )
        output = completed.stdout + completed.stderr
        if completed.returncode != 0 or not result_file.exists():
            raise RuntimeError(f"the example's interpreter exited with {completed.returncode}:\n{output[-4000:]}")
        answer = json.loads(result_file.read_text())
    # The example's folder, the layer's, and the interpreter's own (.venv lives in the repository).
    allowed = tuple(str(Path(p).resolve()) for p in (deployment.code_dir, LAYER_PATH, sys.prefix, sys.base_prefix))
    foreign = sorted(path for path in answer["repository_files"] if not str(Path(path).resolve()).startswith(allowed))
    return ExampleRun(deployment, event, answer["result"], output, foreign)


def _ssm_value(ssm: Any, name: str, what: str) -> str:
    try:
        return str(ssm.get_parameter(Name=name)["Parameter"]["Value"])
    except ssm.exceptions.ParameterNotFound:
        # CloudFormation's ValidationError for an SSM parameter type whose parameter is missing.
        raise ExampleDeployError(f"{what}: the SSM parameter {name} does not exist (is the bundle deployed?)") from None


def _resolve_dynamic(ssm: Any, text: str) -> str:
    return _DYNAMIC_REFERENCE.sub(lambda match: _ssm_value(ssm, match.group(1), match.group(0)), text)


def _check_layers(layers: list[str], bundle_stack: str) -> None:
    # The only layer version that exists here is the local bundle's: its source folder stands in for it.
    unknown = [arn for arn in layers if arn != local_layer_arn(bundle_stack)]
    if unknown or not layers:
        raise ExampleDeployError(
            f"layers {unknown or layers} are not the local bundle's {local_layer_arn(bundle_stack)}"
        )


def _check_policies(policies: list[str]) -> None:
    iam = boto3.client("iam")
    for arn in policies:
        try:
            iam.get_policy(PolicyArn=arn)
        except iam.exceptions.NoSuchEntityException:
            raise ExampleDeployError(f"the managed policy {arn} does not exist") from None


# Runs in the fresh interpreter: the Lambda runtime's part. argv: handler, event (JSON), timeout seconds,
# memory MB, result file, repository root (only to list which of its files were loaded), the function's ARN.
_CHILD = r"""
import importlib, json, sys, time, uuid

handler_name, event, timeout, memory, result_file, repository, function_arn = sys.argv[1:8]
started = time.monotonic()


class Context:
    invoked_function_arn = function_arn
    function_name = function_arn.rpartition(":")[2]
    function_version = "$LATEST"
    memory_limit_in_mb = int(memory)
    aws_request_id = str(uuid.uuid4())
    log_group_name = "/aws/lambda/" + function_name
    log_stream_name = "local/" + aws_request_id

    def get_remaining_time_in_millis(self):
        return max(0, int((float(timeout) - (time.monotonic() - started)) * 1000))


module_name, _, function = handler_name.rpartition(".")
handler = getattr(importlib.import_module(module_name), function)
result = json.loads(json.dumps(handler(json.loads(event), Context())))
loaded = {getattr(m, "__file__", None) or "" for m in list(sys.modules.values())}
with open(result_file, "w") as out:
    json.dump({"result": result, "repository_files": sorted(f for f in loaded if f.startswith(repository))}, out)
"""
