"""tools/env_json.py: the committed env.json against template.yaml, and the stack mode against moto's server
(CloudFormation outputs, Lambda functions with a `live` alias) and its failures."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from local.template import REPO_ROOT, load_template
from tools import env_json
from tools.env_json import FUNCTIONS, placeholder, render, short_form, template_environments

STACK = "usage-engine-token-bundle"
COMMITTED = REPO_ROOT / "env.json"
PLACEHOLDER_PREFIX = "<your stack's "


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


# --- The committed env.json ------------------------------------------------------------------------------


def committed_document() -> dict[str, dict[str, str]]:
    document = json.loads(COMMITTED.read_text(encoding="utf-8"))
    values = [value for variables in document.values() for value in variables.values()]
    if values and not any(value.startswith(PLACEHOLDER_PREFIX) for value in values):
        # `make env-json` overwrote it with a deployed stack's values in this working copy.
        pytest.skip("env.json holds a deployed stack's values (make env-json); `git checkout env.json` to check it")
    return dict(document)


def test_committed_env_json_is_what_the_tool_makes_of_the_template(template):
    committed = COMMITTED.read_text(encoding="utf-8")
    committed_document()
    assert committed == render(template_environments(template)), (
        "env.json is stale: python -m tools.env_json --template-placeholders"
    )


def test_committed_env_json_holds_each_functions_whole_environment(template):
    """Read independently of the tool: Globals then the function's own variables, literals as written."""
    document = committed_document()
    globals_env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert list(document) == list(FUNCTIONS)
    for function_id in FUNCTIONS:
        own = template["Resources"][function_id]["Properties"]["Environment"]["Variables"]
        expected = {**globals_env, **own}
        assert set(document[function_id]) == set(expected), function_id
        for name, value in expected.items():
            written = document[function_id][name]
            if isinstance(value, dict):
                assert written == placeholder(value), (function_id, name)
                assert written.startswith(PLACEHOLDER_PREFIX)
                assert written.endswith(": make env-json>")
            else:
                assert written == str(value), (function_id, name)
    # The template's literals reach the file as they are: a spot check that does not go through the tool.
    assert document["MeterEventsFunction"]["MAX_RECEIVE_COUNT"] == "5"
    assert document["MeterQueryFunction"]["POWERTOOLS_SERVICE_NAME"] == "meter-query"
    assert document["MeterQueryFunction"]["TOKEN_SECRET_ID"] == "<your stack's !Ref TokenSecret: make env-json>"


def test_the_tool_knows_every_function_of_the_template_and_its_name_output(template):
    functions = {name for name, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}
    assert set(FUNCTIONS) == functions
    for function_id in FUNCTIONS:
        assert template["Outputs"][f"{function_id}Name"]["Value"] == {"Ref": function_id}


def test_template_placeholders_mode_writes_the_file(tmp_path, template, capsys):
    output = tmp_path / "env.json"

    status = env_json.main(["--template-placeholders", "--output", str(output)])

    assert status == 0
    assert output.read_text(encoding="utf-8") == render(template_environments(template))
    out = capsys.readouterr().out
    assert f"Wrote {output}" in out
    assert "MeterQueryFunction: POWERTOOLS_LOGGER_LOG_EVENT," in out


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ({"Ref": "TokenSecret"}, "!Ref TokenSecret"),
        ({"Fn::Sub": "${TokenRefresherFunction}:live"}, "!Sub ${TokenRefresherFunction}:live"),
        ({"Fn::GetAtt": ["MeterEventsQueue", "Arn"]}, "!GetAtt MeterEventsQueue.Arn"),
        ({"Fn::If": ["XRaySdkTracingEnabled", "true", False]}, "!If [XRaySdkTracingEnabled, true, false]"),
        (
            {"Fn::FindInMap": ["UsageEngineEndpoints", {"Ref": "UsageEngineRegion"}, "ApiUrl"]},
            "!FindInMap [UsageEngineEndpoints, !Ref UsageEngineRegion, ApiUrl]",
        ),
    ],
)
def test_placeholders_spell_the_expression_as_the_template_does(expression, expected):
    assert short_form(expression) == expected
    assert placeholder(expression) == f"<your stack's {expected}: make env-json>"


# --- From a deployed stack (moto) --------------------------------------------------------------------------


def handler_zip() -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("app.py", "def lambda_handler(event, context):\n    return event\n")
    return archive.getvalue()


def deployed_values(function_id: str, names: list[str], version: str) -> dict[str, str]:
    # Distinctive values: the output must show none of them.
    return {name: f"{version}-{function_id}-{name}-value" for name in names}


def deploy(
    template: dict[str, Any], *, outputs: list[str] | None = None, without_alias: frozenset[str] = frozenset()
) -> dict[str, dict[str, str]]:
    """Three functions as the stack has them: version 1 behind `live`, then $LATEST changed (as by a
    deployment in progress, or a console edit). Returns what each function's `live` runs (or $LATEST)."""
    role = boto3.client("iam").create_role(
        RoleName="usage-engine-function-role",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
    )["Role"]["Arn"]
    client = boto3.client("lambda")
    code = handler_zip()
    expected: dict[str, dict[str, str]] = {}
    for function_id, names in template_environments(template).items():
        name = f"{STACK}-{function_id}-AbC123"
        live = deployed_values(function_id, sorted(names), "live")
        client.create_function(
            FunctionName=name,
            Runtime="python3.13",
            Role=role,
            Handler="app.lambda_handler",
            Code={"ZipFile": code},
            Environment={"Variables": live},
            Publish=True,
        )
        latest = deployed_values(function_id, sorted(names), "latest")
        client.update_function_configuration(FunctionName=name, Environment={"Variables": latest})
        if function_id in without_alias:
            expected[function_id] = latest
        else:
            client.create_alias(FunctionName=name, Name="live", FunctionVersion="1")
            expected[function_id] = live
    stack_outputs = {f"{f}Name": f"{STACK}-{f}-AbC123" for f in (FUNCTIONS if outputs is None else outputs)}
    stack_template = {
        "Resources": {"Placeholder": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {key: {"Value": value} for key, value in stack_outputs.items()},
    }
    boto3.client("cloudformation").create_stack(StackName=STACK, TemplateBody=json.dumps(stack_template))
    return expected


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = env_json.main(argv)
    captured = capsys.readouterr()
    for text in (captured.out, captured.err):
        assert "-value" not in text, "a variable's value in the output"
        assert "Traceback" not in text
    return status, captured.out, captured.err


def assert_failed(status: int, out: str, err: str, message: str, output: Path) -> None:
    assert status == 2
    assert out == ""
    assert err == f"env_json: {message}\n"
    assert not output.exists()


def test_stack_mode_writes_each_functions_live_environment(aws, template, tmp_path, capsys):
    expected = deploy(template)
    output = tmp_path / "env.json"

    status, out, err = run_main(["--stack", STACK, "--output", str(output)], capsys)

    assert (status, err) == (0, "")
    written = json.loads(output.read_text(encoding="utf-8"))
    assert written == expected
    assert list(written) == list(FUNCTIONS)
    # The same variables as the committed placeholders: a local run gets every one the template declares.
    assert {f: set(v) for f, v in written.items()} == {f: set(v) for f, v in template_environments(template).items()}
    assert out.splitlines()[0] == f"Wrote {output} from stack {STACK}:"
    for function_id in FUNCTIONS:
        names = ", ".join(sorted(expected[function_id]))
        assert f"  {function_id} ({STACK}-{function_id}-AbC123, live): {names}" in out.splitlines()


def test_a_function_without_the_live_alias_gives_its_latest_environment(aws, template, tmp_path, capsys):
    expected = deploy(template, without_alias=frozenset({"MeterEventsFunction"}))
    output = tmp_path / "env.json"

    status, out, _ = run_main(["--stack", STACK, "--output", str(output)], capsys)

    assert status == 0
    written = json.loads(output.read_text(encoding="utf-8"))
    assert written["MeterEventsFunction"] == expected["MeterEventsFunction"]
    assert set(written["MeterEventsFunction"].values()) == {
        f"latest-MeterEventsFunction-{name}-value" for name in written["MeterEventsFunction"]
    }
    assert written["MeterQueryFunction"] == expected["MeterQueryFunction"]
    assert f"MeterEventsFunction ({STACK}-MeterEventsFunction-AbC123, $LATEST, no live alias)" in out


def test_an_unknown_stack(aws, tmp_path, capsys):
    output = tmp_path / "env.json"
    status, out, err = run_main(["--stack", "no-such-stack", "--output", str(output)], capsys)
    assert_failed(status, out, err, "stack no-such-stack not found (in this account and region)", output)


def test_a_stack_without_the_function_outputs(aws, template, tmp_path, capsys):
    deploy(template, outputs=["TokenRefresherFunction"])
    output = tmp_path / "env.json"
    status, out, err = run_main(["--stack", STACK, "--output", str(output)], capsys)
    assert_failed(
        status,
        out,
        err,
        f"stack {STACK} has no output MeterEventsFunctionName, MeterQueryFunctionName: "
        "is it this bundle, fully deployed?",
        output,
    )


def test_a_function_the_outputs_name_but_that_does_not_exist(aws, tmp_path, capsys):
    stack_template = {
        "Resources": {"Placeholder": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {f"{f}Name": {"Value": f"gone-{f}"} for f in FUNCTIONS},
    }
    boto3.client("cloudformation").create_stack(StackName=STACK, TemplateBody=json.dumps(stack_template))
    output = tmp_path / "env.json"
    status, out, err = run_main(["--stack", STACK, "--output", str(output)], capsys)
    assert_failed(
        status,
        out,
        err,
        "function gone-TokenRefresherFunction (TokenRefresherFunction) not found: redeploy the stack?",
        output,
    )


def stubbed_clients(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Real boto3 clients answered by Stubber (moto does not enforce IAM), handed to main() by the session."""
    clients = {
        name: boto3.client(name, region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x")
        for name in ("cloudformation", "lambda")
    }
    monkeypatch.setattr(boto3.session.Session, "client", lambda _self, name, **_kwargs: clients[name])
    return clients


def test_access_denied_to_the_stack(tmp_path, capsys, monkeypatch):
    clients = stubbed_clients(monkeypatch)
    output = tmp_path / "env.json"
    with Stubber(clients["cloudformation"]) as stub:
        stub.add_client_error("describe_stacks", service_error_code="AccessDenied", http_status_code=403)
        status, out, err = run_main(["--stack", STACK, "--output", str(output)], capsys)
    assert_failed(
        status,
        out,
        err,
        f"cannot describe stack {STACK}: access denied (AccessDenied): your credentials need "
        "cloudformation:DescribeStacks",
        output,
    )


def test_access_denied_to_a_function(tmp_path, capsys, monkeypatch):
    clients = stubbed_clients(monkeypatch)
    output = tmp_path / "env.json"
    outputs = [{"OutputKey": f"{f}Name", "OutputValue": f"fn-{f}"} for f in FUNCTIONS]
    stack = {"StackName": STACK, "CreationTime": "2024-01-01T00:00:00Z", "StackStatus": "CREATE_COMPLETE"}
    with Stubber(clients["cloudformation"]) as cloudformation, Stubber(clients["lambda"]) as lambda_:
        cloudformation.add_response("describe_stacks", {"Stacks": [{**stack, "Outputs": outputs}]})
        lambda_.add_client_error(
            "get_function_configuration", service_error_code="AccessDeniedException", http_status_code=403
        )
        status, out, err = run_main(["--stack", STACK, "--output", str(output)], capsys)
    assert_failed(
        status,
        out,
        err,
        "cannot read the configuration of fn-TokenRefresherFunction:live: access denied (AccessDeniedException): "
        "your credentials need lambda:GetFunctionConfiguration",
        output,
    )


def test_no_credentials(aws, tmp_path, capsys, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    output = tmp_path / "env.json"
    status, out, err = run_main(["--stack", STACK, "--output", str(output)], capsys)
    assert_failed(status, out, err, "AWS: NoCredentialsError: Unable to locate credentials", output)


def test_no_region(aws, tmp_path, capsys, monkeypatch):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    output = tmp_path / "env.json"
    status, out, err = run_main(["--stack", STACK, "--output", str(output)], capsys)
    assert_failed(status, out, err, "AWS: NoRegionError: You must specify a region.", output)


@pytest.mark.parametrize(
    "argv",
    [[], ["--stack", STACK, "--template-placeholders"], ["--stack", STACK, "--template", "template.yaml"]],
)
def test_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        env_json.main(argv)
    assert exit_info.value.code == 2
    assert "usage: env_json" in capsys.readouterr().err
