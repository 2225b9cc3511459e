"""Write env.json for `sam local invoke --env-vars env.json`: each function's environment as deployed.

    make env-json [STACK=usage-engine-token-bundle] [REGION=...]
    python -m tools.env_json --stack NAME [--region R] [--output env.json]
    python -m tools.env_json --template-placeholders [--output env.json]

`sam local invoke` resolves neither `!Ref` nor `!GetAtt` in a function's environment to the deployed resources,
so a local run needs their real values from a file. The file has SAM CLI's --env-vars shape, one object per
function logical id: {"MeterQueryFunction": {"TOKEN_SECRET_ID": "arn:...", ...}, ...} (no global "Parameters"
object: each function has its own variables). With --stack, the function names come from the stack's outputs
(`<LogicalId>Name`) and each environment from Lambda GetFunctionConfiguration of the `live` alias, the version
the stack's traffic runs (the function itself, $LATEST, where the alias is missing). The environment holds
names, ARNs and URLs only (the secrets stay in Secrets Manager); the tool prints the variable names, not their
values.

--template-placeholders writes the committed env.json from template.yaml: every variable a function gets
(Globals included), literal values as written, every other value a placeholder naming its expression, so the
file shows what a local run needs and a test keeps it equal to the template.

Exit status: 0 written, 2 usage error or a failure the message names (stack, output, function, AWS error code).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import boto3
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:  # boto3-stubs: typing only
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_lambda import LambdaClient

# The template's functions, in the order the file lists them; each has the stack output `<LogicalId>Name`.
FUNCTIONS = ("TokenRefresherFunction", "MeterEventsFunction", "MeterQueryFunction")
ALIAS = "live"
DEFAULT_OUTPUT = Path("env.json")
ACCESS_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})

Environments = dict[str, dict[str, str]]


class EnvJsonError(Exception):
    """A failure the user can act on. Messages name stacks, outputs, functions and error codes, never values."""


def output_name(function_id: str) -> str:
    return f"{function_id}Name"


# --- From the deployed stack -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeployedFunction:
    logical_id: str
    name: str
    qualifier: str  # ALIAS, or "$LATEST" where the alias is missing
    variables: dict[str, str]


def stack_function_names(client: CloudFormationClient, stack: str) -> dict[str, str]:
    """Logical id -> function name, from the stack's outputs."""
    try:
        stacks = client.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as error:
        code = _code(error)
        if code == "ValidationError":  # CloudFormation's answer for a stack that does not exist
            raise EnvJsonError(f"stack {stack} not found (in this account and region)") from None
        raise EnvJsonError(
            f"cannot describe stack {stack}: {_explain(code, 'cloudformation:DescribeStacks')}"
        ) from None
    if not stacks:
        raise EnvJsonError(f"stack {stack} not found (in this account and region)")
    outputs = {str(o["OutputKey"]): str(o["OutputValue"]) for o in stacks[0].get("Outputs", [])}
    missing = [output_name(f) for f in FUNCTIONS if not outputs.get(output_name(f))]
    if missing:
        raise EnvJsonError(f"stack {stack} has no output {', '.join(missing)}: is it this bundle, fully deployed?")
    return {function_id: outputs[output_name(function_id)] for function_id in FUNCTIONS}


def deployed_function(client: LambdaClient, logical_id: str, name: str) -> DeployedFunction:
    """The function's environment as its `live` alias runs it, else as the function itself holds it."""
    try:
        return _configuration(client, logical_id, name, ALIAS)
    except _NotFoundError:
        pass
    try:
        return _configuration(client, logical_id, name, None)
    except _NotFoundError:
        raise EnvJsonError(f"function {name} ({logical_id}) not found: redeploy the stack?") from None


class _NotFoundError(Exception):
    pass


def _configuration(client: LambdaClient, logical_id: str, name: str, qualifier: str | None) -> DeployedFunction:
    try:
        if qualifier is None:
            response = client.get_function_configuration(FunctionName=name)
        else:
            response = client.get_function_configuration(FunctionName=name, Qualifier=qualifier)
    except ClientError as error:
        code = _code(error)
        if code == "ResourceNotFoundException":
            raise _NotFoundError from None
        target = f"{name}:{qualifier}" if qualifier else name
        raise EnvJsonError(
            f"cannot read the configuration of {target}: {_explain(code, 'lambda:GetFunctionConfiguration')}"
        ) from None
    environment = response.get("Environment", {})
    failure = environment.get("Error")
    if failure:  # e.g. a customer managed key the caller may not decrypt with
        raise EnvJsonError(f"cannot read the environment of {name}: {failure.get('ErrorCode', 'Unknown')}")
    variables = {str(k): str(v) for k, v in environment.get("Variables", {}).items()}
    return DeployedFunction(logical_id, name, qualifier or "$LATEST", variables)


def deployed_functions(
    cloudformation: CloudFormationClient, lambda_: LambdaClient, stack: str
) -> list[DeployedFunction]:
    names = stack_function_names(cloudformation, stack)
    return [deployed_function(lambda_, function_id, names[function_id]) for function_id in FUNCTIONS]


def _code(error: ClientError) -> str:
    code = error.response.get("Error", {}).get("Code")
    return str(code) if code else "Unknown"


def _explain(code: str, action: str) -> str:
    if code in ACCESS_DENIED:
        return f"access denied ({code}): your credentials need {action}"
    return code


# --- From template.yaml: placeholders ---------------------------------------------------------------------


def template_environments(template: Mapping[str, Any]) -> Environments:
    """Every variable each function gets (Globals, then its own): literal values as written, the others as
    placeholders naming their expression."""
    globals_env = template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    environments: Environments = {}
    for function_id in FUNCTIONS:
        properties = template["Resources"][function_id]["Properties"]
        variables = {**globals_env, **properties.get("Environment", {}).get("Variables", {})}
        environments[function_id] = {name: _template_value(value) for name, value in variables.items()}
    return environments


def _template_value(value: Any) -> str:
    if isinstance(value, dict):
        return placeholder(value)
    if isinstance(value, bool):  # CloudFormation passes YAML's true/false as "true"/"false"
        return "true" if value else "false"
    return str(value)


def placeholder(expression: Mapping[str, Any]) -> str:
    return f"<your stack's {short_form(expression)}: make env-json>"


def short_form(node: Any) -> str:
    """An expression in the template's own short-form spelling, e.g. `!Sub ${TokenRefresherFunction}:live`."""
    if isinstance(node, list):
        return "[" + ", ".join(short_form(item) for item in node) + "]"
    if isinstance(node, dict):
        if len(node) == 1:
            ((key, argument),) = node.items()
            if key == "Fn::GetAtt" and isinstance(argument, list):
                return "!GetAtt " + ".".join(str(part) for part in argument)
            if key in ("Ref", "Condition") or key.startswith("Fn::"):
                return f"!{key.removeprefix('Fn::')} {short_form(argument)}"
        return "{" + ", ".join(f"{key}: {short_form(value)}" for key, value in node.items()) + "}"
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


# --- Output ------------------------------------------------------------------------------------------------


def render(environments: Mapping[str, Mapping[str, str]]) -> str:
    """SAM CLI's --env-vars document: functions in FUNCTIONS order, variables sorted (stable diffs)."""
    document = {function_id: dict(sorted(environments[function_id].items())) for function_id in FUNCTIONS}
    return json.dumps(document, indent=2) + "\n"


def write(path: Path, environments: Mapping[str, Mapping[str, str]]) -> None:
    try:
        path.write_text(render(environments), encoding="utf-8")
    except OSError as error:
        raise EnvJsonError(f"cannot write {path}: {error.strerror or type(error).__name__}") from None


def run_stack(
    stack: str, output: Path, *, cloudformation: CloudFormationClient, lambda_: LambdaClient, out: TextIO
) -> None:
    functions = deployed_functions(cloudformation, lambda_, stack)
    write(output, {function.logical_id: function.variables for function in functions})
    print(f"Wrote {output} from stack {stack}:", file=out)
    for function in functions:
        source = ALIAS if function.qualifier == ALIAS else f"$LATEST, no {ALIAS} alias"
        print(f"  {function.logical_id} ({function.name}, {source}): {', '.join(sorted(function.variables))}", file=out)


def run_template(template_path: Path | None, output: Path, *, out: TextIO) -> None:
    from local.template import TEMPLATE_PATH, load_template  # deferred: cfn-lint's loader, a dev tool

    path = template_path or TEMPLATE_PATH
    try:
        template = load_template(path)
    except OSError as error:
        raise EnvJsonError(f"cannot read {path}: {error.strerror or type(error).__name__}") from None
    environments = template_environments(template)
    write(output, environments)
    print(f"Wrote {output} from {path} (placeholders; `make env-json` fills in a deployed stack's values):", file=out)
    for function_id in FUNCTIONS:
        print(f"  {function_id}: {', '.join(sorted(environments[function_id]))}", file=out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="env_json",
        description="Write env.json (sam local invoke --env-vars) from a deployed stack's functions.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--stack", help="CloudFormation stack of the bundle")
    source.add_argument(
        "--template-placeholders",
        action="store_true",
        help="write placeholders from template.yaml instead (the committed env.json)",
    )
    parser.add_argument("--template", type=Path, help="template path with --template-placeholders")
    parser.add_argument("--region", help="AWS region (default: the usual AWS configuration)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="file to write (default: env.json)")
    args = parser.parse_args(argv)
    if args.template and not args.template_placeholders:
        parser.error("--template goes with --template-placeholders")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.template_placeholders:
            run_template(args.template, args.output, out=sys.stdout)
        else:
            session = boto3.session.Session(region_name=args.region)
            run_stack(
                args.stack,
                args.output,
                cloudformation=session.client("cloudformation"),
                lambda_=session.client("lambda"),
                out=sys.stdout,
            )
    except EnvJsonError as error:
        print(f"env_json: {error}", file=sys.stderr)
        return 2
    except BotoCoreError as error:  # no region, no credentials, endpoint unreachable
        print(f"env_json: AWS: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
