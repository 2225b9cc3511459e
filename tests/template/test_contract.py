"""The platform contract: what the bundle's stack publishes for consumers in other stacks, under the stack-scoped
SSM path /usage-engine/<stack>/ and as exported outputs (docs/operations.md, "Platform contract"), and the
layer versions those consumers deploy with, which outlive the stack's updates."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.template.conftest import (
    API_URL,
    CONSUMER_POLICY_ID,
    KEY_ARN,
    REFRESHER_ID,
    REPO_ROOT,
    TOKEN_SECRET_ID,
    Evaluator,
    alias_id,
    resources_of_type,
)

# parameter name suffix -> (export name suffix, the value as template.yaml writes it)
CONTRACT: dict[str, tuple[str, Any]] = {
    "layer-version-arn": ("LayerVersionArn", {"Ref": "UsageEngineLayer"}),
    "token-secret-arn": ("TokenSecretArn", {"Ref": TOKEN_SECRET_ID}),
    "encryption-key-arn": ("EncryptionKeyArn", KEY_ARN),
    "refresher-function-arn": ("TokenRefresherFunctionArn", {"Ref": f"{REFRESHER_ID}.Alias"}),
    "api-url": ("ApiUrl", API_URL),
    "token-expiry-skew-seconds": ("TokenExpirySkewSeconds", {"Ref": "TokenExpirySkewSeconds"}),
    "consumer-policy-arn": ("ConsumerPolicyArn", {"Ref": CONSUMER_POLICY_ID}),
}
PARAMETER_NAME = re.compile(r"^/usage-engine/\$\{AWS::StackName\}/(?P<suffix>[a-z-]+)$")
EXPORT_NAME = re.compile(r"^\$\{AWS::StackName\}-(?P<suffix>[A-Za-z]+)$")


def contract_parameters(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The SSM parameters under the stack's contract path, by name suffix."""
    found = {}
    for logical_id, resource in resources_of_type(template["Resources"], "AWS::SSM::Parameter").items():
        name = resource["Properties"]["Name"]
        match = PARAMETER_NAME.match(name.get("Fn::Sub", "")) if isinstance(name, dict) else None
        assert match, f"{logical_id}: {name!r} is not under /usage-engine/${{AWS::StackName}}/"
        assert match["suffix"] not in found, f"two parameters named {match['suffix']}"
        found[match["suffix"]] = resource["Properties"]
    return found


def exports(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The outputs that are exported, by export name suffix."""
    found = {}
    for output_id, output in template["Outputs"].items():
        if "Export" not in output:
            continue
        match = EXPORT_NAME.match(output["Export"]["Name"].get("Fn::Sub", ""))
        assert match, f"{output_id}: export {output['Export']!r} is not ${{AWS::StackName}}-<name>"
        found[match["suffix"]] = output
    return found


def test_every_contract_value_is_a_stack_scoped_string_parameter(sam_template: dict[str, Any]) -> None:
    parameters = contract_parameters(sam_template)
    assert sorted(parameters) == sorted(CONTRACT)
    for suffix, (_, value) in CONTRACT.items():
        properties = parameters[suffix]
        assert properties["Type"] == "String", suffix
        assert properties["Value"] == value, suffix
        assert properties.get("Description"), suffix


def test_every_contract_value_is_exported_under_the_stack_name(sam_template: dict[str, Any]) -> None:
    exported = exports(sam_template)
    assert sorted(exported) == sorted(export for export, _ in CONTRACT.values())
    for export, value in CONTRACT.values():
        assert exported[export]["Value"] == value, export
        assert exported[export].get("Description"), export


def test_the_refresher_is_published_as_its_live_alias(cfn_template: dict[str, Any]) -> None:
    # What consumers in other stacks invoke: the alias that the schedule invokes and CodeDeploy shifts.
    alias = {"Ref": alias_id(REFRESHER_ID)}
    assert contract_parameters(cfn_template)["refresher-function-arn"]["Value"] == alias
    assert exports(cfn_template)["TokenRefresherFunctionArn"]["Value"] == alias
    assert cfn_template["Resources"][alias_id(REFRESHER_ID)]["Type"] == "AWS::Lambda::Alias"


@pytest.mark.parametrize(
    ("parameters", "api_url"),
    [
        ({}, "https://api.digitalroute.io"),
        ({"UsageEngineRegion": "US"}, "https://api.us.digitalroute.io"),
        ({"UsageEngineRegion": "US", "UsageEngineApiUrl": "https://api.example.test"}, "https://api.example.test"),
    ],
)
def test_the_api_url_parameter_is_the_one_the_built_in_consumers_call(
    sam_template: dict[str, Any], parameters: dict[str, str], api_url: str
) -> None:
    evaluator = Evaluator(sam_template, parameters)
    published = evaluator.resolve(sam_template["Resources"]["ApiUrlParameter"]["Properties"]["Value"])
    assert published == api_url
    for consumer in ("MeterEventsFunction", "MeterQueryFunction"):
        env = sam_template["Resources"][consumer]["Properties"]["Environment"]["Variables"]
        assert evaluator.resolve(env["USAGE_ENGINE_API_URL"]) == api_url, consumer


def test_the_contract_path_is_an_output(sam_template: dict[str, Any]) -> None:
    assert sam_template["Outputs"]["ContractParameterPath"]["Value"] == {"Fn::Sub": "/usage-engine/${AWS::StackName}/"}


@pytest.mark.parametrize(("layer_id", "name"), [("UsageEngineLayer", "usage-engine"), ("XRaySdkLayer", "xray-sdk")])
def test_layer_versions_outlive_updates_and_are_named_after_the_stack(
    sam_template: dict[str, Any], cfn_resources: dict[str, dict[str, Any]], layer_id: str, name: str
) -> None:
    properties = sam_template["Resources"][layer_id]["Properties"]
    # A consumer in another stack deploys with the version it names: an update must not delete it.
    assert properties["RetentionPolicy"] == "Retain"
    assert properties["LayerName"] == {"Fn::Sub": f"${{AWS::StackName}}-{name}"}
    (version,) = [r for k, r in cfn_resources.items() if k.startswith(layer_id)]
    assert version["Type"] == "AWS::Lambda::LayerVersion"
    assert version["DeletionPolicy"] == "Retain"


def operations_guide_contract() -> list[tuple[str, str]]:
    """The (parameter suffix, export suffix) rows of the Platform contract table in docs/operations.md."""
    text = (REPO_ROOT / "docs" / "operations.md").read_text()
    section = text.split("\n## Platform contract\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z-]+)` \| `\$\{AWS::StackName\}-([A-Za-z]+)` \|", section, re.MULTILINE)


def test_the_operations_guide_lists_the_contract() -> None:
    assert sorted(operations_guide_contract()) == sorted((suffix, export) for suffix, (export, _) in CONTRACT.items())
