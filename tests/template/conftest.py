"""Fixtures for the template tests: the SAM template as written, and the CloudFormation it becomes.

The template is read with cfn-lint's YAML decoder (it understands the short-form tags such as !Ref) and
transformed with the SAM translator, offline: a fixed Region instead of AWS credentials, and an empty
managed-policy map (the template names no managed policy by name, so the map is never needed).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from samtranslator.parser.parser import Parser  # type: ignore[import-untyped]
from samtranslator.translator.translator import Translator  # type: ignore[import-untyped]

from local import template as local_template
from local.template import REGION, REPO_ROOT, TEMPLATE_PATH, UnresolvedError, load_template

__all__ = ["REGION", "REPO_ROOT", "TEMPLATE_PATH", "Evaluator", "UnresolvedError"]

REFRESHER_ID = "TokenRefresherFunction"
CREDENTIALS_SECRET_ID = "CredentialsSecret"
TOKEN_SECRET_ID = "TokenSecret"
CONSUMER_POLICY_ID = "ConsumerPolicy"
DEPLOYMENT_ROLE_ID = "DeploymentRole"
# AutoPublishAlias of every function: what invokes a function invokes this alias.
ALIAS = "live"


def alias_id(function_id: str) -> str:
    """The logical ID of the alias SAM makes for a function's AutoPublishAlias."""
    return f"{function_id}Alias{ALIAS}"


class Evaluator(local_template.Evaluator):
    """local.template's evaluator plus what the replica regions and the Rules section use: list parameters
    (`Ref` of a CommaDelimitedList gives its members, trimmed, as CloudFormation does), `Fn::Join`, `Fn::Or`,
    `Fn::And` and the rule function `Fn::Contains`."""

    def _is_list_parameter(self, name: str) -> bool:
        parameter = self.template["Parameters"].get(name)
        return parameter is not None and parameter["Type"] == "CommaDelimitedList"

    def resolve(self, node: Any) -> Any:
        if isinstance(node, dict) and len(node) == 1:
            ((function, argument),) = node.items()
            if function == "Ref" and self._is_list_parameter(argument):
                return [member.strip() for member in self.values[argument].split(",")]
            if function == "Fn::Join":
                separator, items = argument
                return separator.join(str(item) for item in self.resolve(items))
            if function == "Fn::Or":
                return any(self.resolve(item) for item in argument)
            if function == "Fn::And":
                return all(self.resolve(item) for item in argument)
            if function == "Fn::Contains":
                items, value = argument
                return self.resolve(value) in self.resolve(items)
        return super().resolve(node)

    def failed_rules(self) -> list[str]:
        """The AssertDescription of every Rules assertion that would refuse these parameter values."""
        failed = []
        for rule in self.template.get("Rules", {}).values():
            if "RuleCondition" in rule and not self.resolve(rule["RuleCondition"]):
                continue
            failed += [a["AssertDescription"] for a in rule["Assertions"] if self.resolve(a["Assert"]) is not True]
        return failed


def _plain(node: Any) -> Any:
    """cfn-lint's node types (dict_node, str_node, ...) as plain JSON types."""
    return json.loads(json.dumps(node))


def _as_packaged(sam_template: dict[str, Any]) -> dict[str, Any]:
    """Local code paths replaced by S3 locations, as `sam package` does before the transform runs."""
    packaged = copy.deepcopy(sam_template)
    for resource in packaged.get("Resources", {}).values():
        properties = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if isinstance(properties.get(key), str):
                properties[key] = f"s3://example-artifacts/{properties[key]}"
    return packaged


@pytest.fixture(scope="session")
def sam_template() -> dict[str, Any]:
    """template.yaml as written (SAM resources, Globals, Parameters)."""
    return load_template()


def transform(sam_template: dict[str, Any], parameter_values: dict[str, str] | None = None) -> dict[str, Any]:
    """The CloudFormation that the SAM transform produces from a SAM template (not modified)."""
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=REGION))
    transformed = translator.translate(
        _as_packaged(sam_template), parameter_values=dict(parameter_values or {}), get_managed_policy_map=lambda: {}
    )
    return dict(_plain(transformed))


@pytest.fixture(scope="session")
def cfn_template(sam_template: dict[str, Any]) -> dict[str, Any]:
    """The CloudFormation template that the SAM transform produces from template.yaml."""
    return transform(sam_template)


@pytest.fixture(scope="session")
def cfn_resources(cfn_template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    resources: dict[str, dict[str, Any]] = cfn_template["Resources"]
    return resources


@pytest.fixture(scope="session")
def refresher(cfn_resources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    resource = cfn_resources[REFRESHER_ID]
    assert resource["Type"] == "AWS::Lambda::Function"
    return resource


@pytest.fixture(scope="session")
def refresher_role_id(refresher: dict[str, Any]) -> str:
    role = refresher["Properties"]["Role"]
    assert set(role) == {"Fn::GetAtt"}, f"the refresher's role must be declared in the template: {role}"
    return str(role["Fn::GetAtt"][0])


@pytest.fixture(scope="session")
def refresher_schedule(cfn_resources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The single EventBridge Scheduler schedule that targets the refresher (its live alias)."""
    schedules = [
        resource
        for resource in cfn_resources.values()
        if resource["Type"] == "AWS::Scheduler::Schedule"
        and resource["Properties"]["Target"]["Arn"] == {"Ref": alias_id(REFRESHER_ID)}
    ]
    assert len(schedules) == 1, f"expected one schedule for the refresher, found {len(schedules)}"
    return schedules[0]


def resources_of_type(resources: dict[str, dict[str, Any]], *types: str) -> dict[str, dict[str, Any]]:
    return {logical_id: r for logical_id, r in resources.items() if r["Type"] in types}


def policy_documents(resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The permission policy documents of an IAM role or policy (not the trust policy)."""
    properties = resource["Properties"]
    if resource["Type"] == "AWS::IAM::Role":
        for policy in properties.get("Policies", []):
            yield policy["PolicyDocument"]
    else:  # AWS::IAM::Policy, AWS::IAM::ManagedPolicy, AWS::IAM::RolePolicy
        yield properties["PolicyDocument"]


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    found = document["Statement"]
    return found if isinstance(found, list) else [found]


def possible_statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every statement a policy can contain: both branches of a statement-level Fn::If, no AWS::NoValue."""
    found = []
    for statement in statements(document):
        branches = statement["Fn::If"][1:] if set(statement) == {"Fn::If"} else [statement]
        found += [branch for branch in branches if branch != {"Ref": "AWS::NoValue"}]
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def references(node: Any, logical_id: str) -> bool:
    """Whether node refers to logical_id by Ref, Fn::GetAtt or Fn::Sub, at any depth."""
    if isinstance(node, dict):
        if node.get("Ref") == logical_id:
            return True
        get_att = node.get("Fn::GetAtt")
        if isinstance(get_att, list) and get_att and get_att[0] == logical_id:
            return True
        if isinstance(get_att, str) and get_att.split(".")[0] == logical_id:
            return True
        return any(references(value, logical_id) for value in node.values())
    if isinstance(node, list):
        return any(references(item, logical_id) for item in node)
    if isinstance(node, str):
        return re.search(r"\$\{" + re.escape(logical_id) + r"[.}]", node) is not None
    return False


# --- Expressions the template uses for values that depend on optional parameters ------------------------

KEY_ARN = {"Fn::If": ["CreateKmsKey", {"Fn::GetAtt": ["EncryptionKey", "Arn"]}, {"Ref": "KmsKeyArn"}]}
CREDENTIALS_ARN = {
    "Fn::If": ["CreateCredentialsSecret", {"Ref": CREDENTIALS_SECRET_ID}, {"Ref": "ExistingCredentialsSecretArn"}]
}
# The API the consumers call: the override when it is set, else the UsageEngineRegion's (test_parameters.py).
API_URL = {
    "Fn::If": [
        "HasApiUrlOverride",
        {"Ref": "UsageEngineApiUrl"},
        {"Fn::FindInMap": ["UsageEngineEndpoints", {"Ref": "UsageEngineRegion"}, "ApiUrl"]},
    ]
}
# The refresher's live alias as consumers name it (TOKEN_REFRESHER_FUNCTION) and as policies grant it: written
# out, so that local.template resolves the name and a policy does not depend on the alias's deployment.
REFRESHER_ALIAS_NAME = {"Fn::Sub": f"${{{REFRESHER_ID}}}:{ALIAS}"}
REFRESHER_ARN = {"Fn::GetAtt": [REFRESHER_ID, "Arn"]}
REFRESHER_ALIAS_ARN = {"Fn::Sub": f"${{{REFRESHER_ID}.Arn}}:{ALIAS}"}
# The consumers this template declares. A consumer added to the template (README, "Adding your own consumer
# Lambda") is any other function but the refresher: checks.consumer_ids finds them all.
CONSUMER_IDS = ("MeterEventsFunction", "MeterQueryFunction")
FUNCTION_IDS = (REFRESHER_ID, *CONSUMER_IDS)


def role_id_of(resources: dict[str, dict[str, Any]], function_id: str) -> str:
    """The logical ID of the role a function runs with (declared in the template, never generated)."""
    role = resources[function_id]["Properties"]["Role"]
    assert set(role) == {"Fn::GetAtt"}, f"{function_id}: {role}"
    assert role["Fn::GetAtt"][1] == "Arn", f"{function_id}: {role}"
    return str(role["Fn::GetAtt"][0])
