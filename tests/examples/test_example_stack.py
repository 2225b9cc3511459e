"""The example consumer stack (examples/consumer): a stack outside the bundle's template that takes everything
from the bundle's published SSM parameters.

* its template passes cfn-lint, `sam validate --lint` and checkov, and `sam build` makes an importable handler
  (the four tools run concurrently, once per module, started by the first test that needs one);
* against the local stack: the bundle's SSM parameters are the contract's, and the example, deployed the way
  CloudFormation would deploy it (local/example_stack.py) and invoked in a fresh interpreter, lists meters and
  heals a 401 through the bundle's refresher, with no secret in what it prints or returns;
* the example names no bundle parameter outside the contract, and its Makefile's overrides match its template.

The tools live in .venv/sam and .venv/checks; without them the tool tests skip, unless REQUIRE_BUILD_ARTIFACTS=1
(`make pytest`), which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from local.example_stack import (
    EXAMPLE_DIR,
    EXAMPLE_TEMPLATE,
    FUNCTION_ID,
    LAYER_PATH,
    ExampleDeployError,
    bundle_parameter_overrides,
    run_example,
)
from local.lambda_runtime import invoke, load_event
from local.resources import (
    BUNDLE_STACK_NAME,
    CONTRACT_PARAMETERS,
    TOKEN_SECRET,
    PublishedParameters,
    local_layer_arn,
    parameter_name,
    publish_bundle_parameters,
)
from local.template import REGION, REPO_ROOT, load_template
from tests import leak_guard
from tests.conftest import REFRESHER_NAME, Deployment
from usage_engine import Components, ConsumerSettings, UsageMeteringApi

VENV = REPO_ROOT / ".venv"
CFN_LINT = VENV / "bin" / "cfn-lint"
SAM = VENV / "sam" / "bin" / "sam"
CHECKOV = VENV / "checks" / "bin" / "checkov"
REQUIRED = os.environ.get("REQUIRE_BUILD_ARTIFACTS") == "1"
TOOL_TIMEOUT_SECONDS = 300
_SSM_PATH = re.compile(r"/usage-engine/([^/\s{}]+)/([^/\s{}]+)")


# --- The template's checks and build: four tools, started together ------------------------------------


@dataclass
class ToolRuns:
    """The tools run on the example, each started at most once and waited for by the test that reads it."""

    build_dir: Path
    _running: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    _done: dict[str, tuple[int, str]] = field(default_factory=dict)

    def commands(self) -> dict[str, tuple[Path, list[str]]]:
        template = str(EXAMPLE_TEMPLATE)
        return {
            "cfn-lint": (CFN_LINT, [str(CFN_LINT), template]),
            "sam validate": (SAM, [str(SAM), "validate", "--lint", "--template", template]),
            "checkov": (
                CHECKOV,
                [str(CHECKOV), "--file", template, "--framework", "cloudformation", "--skip-download", "--compact"],
            ),
            "sam build": (
                SAM,
                [str(SAM), "build", "--template", template, "--build-dir", str(self.build_dir), "--no-cached"],
            ),
        }

    def start_all(self) -> None:
        environment = {
            **os.environ,
            "AWS_DEFAULT_REGION": REGION,
            "SAM_CLI_TELEMETRY": "0",
            # As the Makefile's BUILD_PATH: the function's Makefile runs with .venv's tools first.
            "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        for name, (tool, command) in self.commands().items():
            if tool.exists() and name not in self._running:
                self._running[name] = subprocess.Popen(  # noqa: S603 - the venv's tools, our arguments
                    command,
                    cwd=REPO_ROOT,
                    env=environment,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )

    def result(self, name: str) -> tuple[int, str]:
        """(exit code, output) of the tool, or a skip (a failure with REQUIRE_BUILD_ARTIFACTS=1) without it."""
        if name not in self._done:
            process = self._running.get(name)
            if process is None:
                tool = self.commands()[name][0]
                message = f"{tool.relative_to(REPO_ROOT)} is not installed (make venv sam-venv checkov)"
                if REQUIRED:
                    pytest.fail(message)
                pytest.skip(message)
            output, _ = process.communicate(timeout=TOOL_TIMEOUT_SECONDS)
            self._done[name] = (process.returncode, output)
        return self._done[name]

    def stop(self) -> None:
        for process in self._running.values():
            if process.poll() is None:
                process.kill()
                process.communicate()


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToolRuns]:
    runs = ToolRuns(build_dir=tmp_path_factory.mktemp("example-build"))
    runs.start_all()
    yield runs
    runs.stop()


def test_cfn_lint_passes(tools: ToolRuns) -> None:
    code, output = tools.result("cfn-lint")
    assert code == 0, output


def test_sam_validate_lint_passes(tools: ToolRuns) -> None:
    code, output = tools.result("sam validate")
    assert code == 0, output
    assert "is a valid SAM Template" in output


def test_checkov_has_no_failed_check(tools: ToolRuns) -> None:
    code, output = tools.result("checkov")
    assert code == 0, output
    assert re.search(r"Failed checks: 0\b", output), output


def test_every_checkov_skip_says_why() -> None:
    template = load_template(EXAMPLE_TEMPLATE)
    skips = [
        (logical_id, skip)
        for logical_id, resource in template["Resources"].items()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    ]
    assert skips, "the example's skips are expected next to its resources"
    for logical_id, skip in skips:
        assert len(skip.get("comment", "").strip()) > 30, f"{logical_id} skips {skip['id']} without a reason"


def test_sam_build_makes_an_importable_handler(tools: ToolRuns, tmp_path: Path) -> None:
    code, output = tools.result("sam build")
    assert code == 0, output
    built = tools.build_dir / FUNCTION_ID
    assert sorted(p.name for p in built.glob("*.py")) == ["app.py"]
    built_template = load_template(tools.build_dir / "template.yaml")
    assert built_template["Resources"][FUNCTION_ID]["Properties"]["CodeUri"] == FUNCTION_ID
    # A fresh interpreter with only the built function and the layer's folder on its path (no repository).
    check = "import json, app; print(json.dumps([app.__file__, callable(app.lambda_handler)]))"
    result = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-B", "-c", check],
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": f"{built}{os.pathsep}{LAYER_PATH}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    handler_file, handler_callable = json.loads(result.stdout.splitlines()[-1])
    assert Path(handler_file).resolve() == (built / "app.py").resolve()
    assert handler_callable


# --- Against the local stack ----------------------------------------------------------------------------


@pytest.fixture
def bundle(consumers: Deployment) -> PublishedParameters:
    """The local bundle with its published parameters and a token in the token secret."""
    published = publish_bundle_parameters(api_url=consumers.emulator.base_url)
    invoke("token_refresher", load_event("refresher-scheduled.json"))
    return published


def container_api(consumers: Deployment) -> UsageMeteringApi:
    """The bundle's side: a client as its own functions build one, to create meters before the example runs."""
    settings = ConsumerSettings(
        token_secret_id=TOKEN_SECRET, api_url=consumers.emulator.base_url, refresher_function=REFRESHER_NAME
    )
    return UsageMeteringApi(Components().client(settings))


def assert_no_secret(*texts: str) -> None:
    leaks = leak_guard.find_leaks("\n".join(texts))
    assert not leaks, f"secret values (sha256 prefixes {leaks}) in the example's output"


def test_the_bundle_publishes_the_contracts_parameters(consumers: Deployment, bundle: PublishedParameters) -> None:
    ssm = boto3.client("ssm")
    stored = {
        p["Name"]: p["Value"]
        for p in ssm.get_parameters_by_path(Path=f"/usage-engine/{BUNDLE_STACK_NAME}/", Recursive=True)["Parameters"]
    }
    assert set(stored) == {parameter_name(suffix) for suffix in CONTRACT_PARAMETERS}
    assert stored == bundle.by_name
    secret_arn = boto3.client("secretsmanager").describe_secret(SecretId=TOKEN_SECRET)["ARN"]
    assert stored[parameter_name("token-secret-arn")] == secret_arn
    assert stored[parameter_name("api-url")] == consumers.emulator.base_url
    assert stored[parameter_name("layer-version-arn")] == local_layer_arn()
    iam = boto3.client("iam")
    policy_arn = stored[parameter_name("consumer-policy-arn")]
    version = iam.get_policy(PolicyArn=policy_arn)["Policy"]["DefaultVersionId"]
    document = iam.get_policy_version(PolicyArn=policy_arn, VersionId=version)["PolicyVersion"]["Document"]
    document = json.loads(document) if isinstance(document, str) else document
    grants = {(s["Action"], json.dumps(s["Resource"])) for s in document["Statement"]}
    assert {action for action, _ in grants} == {
        "secretsmanager:GetSecretValue",
        "kms:Decrypt",
        "lambda:InvokeFunction",
    }
    assert ("secretsmanager:GetSecretValue", json.dumps(secret_arn)) in grants
    assert ("kms:Decrypt", json.dumps(stored[parameter_name("encryption-key-arn")])) in grants


def test_the_example_lists_a_users_meters_from_outside_the_bundle(
    consumers: Deployment, bundle: PublishedParameters
) -> None:
    api = container_api(consumers)
    api.create_meter(domain="acme", external_ref="a", meter_type_id="api-calls", user_id="user-42")
    api.create_meter(domain="acme", external_ref="b", meter_type_id="storage-gb", user_id="user-42")
    api.create_meter(domain="acme", external_ref="c", meter_type_id="api-calls", user_id="someone-else")

    run = run_example({"userId": "user-42"})

    assert run.result == {"userId": "user-42", "meterCount": 2}
    # Every value came from the bundle's parameters: the token secret by ARN (the bundle's own functions get
    # its name), the refresher by its published alias ARN, the layer and the policy as published.
    environment = run.deployment.environment
    assert environment["TOKEN_SECRET_ID"] == bundle.values["token-secret-arn"]
    assert environment["TOKEN_REFRESHER_FUNCTION"] == bundle.values["refresher-function-arn"]
    assert environment["USAGE_ENGINE_API_URL"] == consumers.emulator.base_url
    assert environment["TOKEN_EXPIRY_SKEW_SECONDS"] == bundle.values["token-expiry-skew-seconds"]
    assert run.deployment.layers == [bundle.values["layer-version-arn"]]
    assert run.deployment.policies == [bundle.values["consumer-policy-arn"]]
    assert set(run.deployment.ssm_names.values()) <= set(bundle.by_name)
    # The fresh interpreter loaded nothing of the bundle's functions or of local/.
    assert run.repository_modules == []
    assert '"meterCount": 2' in run.summary
    assert_no_secret(run.output, json.dumps(run.result))


def test_a_401_heals_through_the_bundles_refresher(consumers: Deployment, bundle: PublishedParameters) -> None:
    container_api(consumers).create_meter(domain="acme", external_ref="a", meter_type_id="api-calls", user_id="u-1")
    consumers.emulator.revoke_all_tokens()
    token_requests = consumers.emulator.token_requests

    run = run_example({"userId": "u-1"})

    assert run.result == {"userId": "u-1", "meterCount": 1}
    # One new token, fetched by the refresher the example asked (through lambda.invoke) after the 401.
    assert consumers.emulator.token_requests == token_requests + 1
    messages = [line.get("message") for line in run.log_lines]
    assert "Asked the token refresher" in messages
    assert_no_secret(run.output, json.dumps(run.result))
    # The check has teeth: the new token itself would be caught.
    assert leak_guard.find_leaks(consumers.stored_token()["access_token"])


@pytest.mark.parametrize(
    ("event", "fault", "code"),
    [
        ({"userId": "../etc"}, None, "invalid_request"),
        ({}, None, "invalid_request"),
        ({"userId": "u-1"}, lambda e: e.fail_next_api_requests(10, 500), "upstream_error"),
        ({"userId": "u-1"}, lambda e: e.fail_next_api_requests(50, 401), "upstream_authentication"),
    ],
    ids=["dot-segments", "no-user", "500", "401-always"],
)
def test_the_example_answers_typed_errors_without_secrets(
    consumers: Deployment, bundle: PublishedParameters, event: dict[str, Any], fault: Any, code: str
) -> None:
    if fault is not None:
        fault(consumers.emulator)
    run = run_example(event)
    assert set(run.result) == {"error"}
    assert run.result["error"]["code"] == code
    assert run.result["error"]["message"]
    assert_no_secret(run.output, json.dumps(run.result))


def test_a_bundle_that_is_not_there_is_refused_as_cloudformation_would(
    consumers: Deployment, bundle: PublishedParameters
) -> None:
    with pytest.raises(ExampleDeployError, match="/usage-engine/no-such-bundle/"):
        run_example(bundle_stack="no-such-bundle")


# --- The example names the contract, nothing else ---------------------------------------------------------


def strings_of(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings_of(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings_of(item)
    else:
        yield str(node)


def test_the_example_references_only_the_contracts_parameters() -> None:
    template = load_template(EXAMPLE_TEMPLATE)
    referenced = {match for text in strings_of(template) for match in _SSM_PATH.findall(text)}
    assert referenced, "the example takes its values from the bundle's SSM parameters"
    assert {suffix for _, suffix in referenced} <= set(CONTRACT_PARAMETERS)
    # Every SSM path has the same (default) bundle stack name, so one override changes them all.
    assert {stack for stack, _ in referenced} == {BUNDLE_STACK_NAME}
    # Nothing of the bundle by another way (its exported outputs).
    assert not [text for text in strings_of(template) if "Fn::ImportValue" in text]


def test_the_bundle_template_publishes_exactly_the_contract() -> None:
    template = load_template()
    published = {
        match[1]
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::SSM::Parameter"
        for text in strings_of(resource["Properties"]["Name"])
        for match in _SSM_PATH.findall(text.replace("${AWS::StackName}", "stack"))
    }
    assert published == set(CONTRACT_PARAMETERS)


def test_the_examples_makefile_overrides_every_bundle_parameter() -> None:
    dry_run = subprocess.run(  # noqa: S603 - make with our arguments
        ["make", "-n", "-C", str(EXAMPLE_DIR), "deploy", "BUNDLE_STACK=other-bundle", "SAM=sam"],  # noqa: S607
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    overrides = dict(
        pair.split("=", 1) for pair in re.search(r"--parameter-overrides (.*?)\s*$", dry_run, re.M).group(1).split()
    )
    assert overrides == bundle_parameter_overrides("other-bundle")
    assert len(overrides) == len(CONTRACT_PARAMETERS) - 1  # all but encryption-key-arn, which it does not need


def test_the_example_never_runs_against_aws_itself(consumers: Deployment, bundle: PublishedParameters) -> None:
    with pytest.raises(ValueError, match="AWS_ENDPOINT_URL"):
        run_example(runtime_environment={"AWS_ENDPOINT_URL_LAMBDA": "http://127.0.0.1:9"})
