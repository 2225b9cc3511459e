"""Safe rollout: every function is published through its live alias, CodeDeploy moves the alias to a new version
(the consumers gradually, the refresher at once) and rolls it back when the function's Errors alarm fires, and
everything that invokes a function invokes that alias, so that what the rollout shifts is what runs."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from local.stack import REFRESHER_FUNCTION, LocalEndpoints, environment_of
from tests.template.conftest import (
    ALIAS,
    CONSUMER_IDS,
    DEPLOYMENT_ROLE_ID,
    FUNCTION_IDS,
    REFRESHER_ALIAS_NAME,
    REFRESHER_ID,
    Evaluator,
    alias_id,
    resources_of_type,
    transform,
)

DEPLOYMENT_TYPES = {
    REFRESHER_ID: "AllAtOnce",
    "MeterEventsFunction": "Linear10PercentEvery1Minute",
    "MeterQueryFunction": "Linear10PercentEvery1Minute",
}


def errors_alarm_id(resources: dict[str, dict[str, Any]], function_id: str) -> str:
    """The function's Errors alarm: every version's errors (FunctionName only, no Resource or ExecutedVersion
    dimension), so a new version's errors count from its first invocation through the alias."""
    (alarm_id,) = [
        logical_id
        for logical_id, alarm in resources_of_type(resources, "AWS::CloudWatch::Alarm").items()
        if alarm["Properties"].get("Namespace") == "AWS/Lambda"
        and alarm["Properties"].get("MetricName") == "Errors"
        and alarm["Properties"].get("Dimensions") == [{"Name": "FunctionName", "Value": {"Ref": function_id}}]
    ]
    return alarm_id


def unaliased_invocations(resources: dict[str, dict[str, Any]]) -> list[str]:
    """Every way the template makes something invoke a function, where it names the function instead of its live
    alias (such calls would run $LATEST and bypass the rollout and its rollback)."""
    functions = set(resources_of_type(resources, "AWS::Lambda::Function"))
    aliases = {alias_id(function_id) for function_id in functions}
    problems = []
    for logical_id, resource in resources.items():
        properties = resource.get("Properties", {})
        kind = resource["Type"]
        if kind == "AWS::Scheduler::Schedule":
            target = properties["Target"]["Arn"]
            if target.get("Ref") not in aliases:
                problems.append(f"{logical_id}: schedule target {target}")
        elif kind in ("AWS::Lambda::EventSourceMapping", "AWS::Lambda::Permission"):
            if properties["FunctionName"].get("Ref") not in aliases:
                problems.append(f"{logical_id}: {properties['FunctionName']}")
        elif kind == "AWS::Lambda::EventInvokeConfig" and properties.get("Qualifier") != ALIAS:
            problems.append(f"{logical_id}: asynchronous settings of {properties.get('Qualifier')!r}")
        elif kind == "AWS::Events::Rule":
            problems += [
                f"{logical_id}: rule target {t['Arn']}"
                for t in properties["Targets"]
                if _names_a_function(t, functions)
            ]
        elif kind == "AWS::ApiGatewayV2::Api":
            for path, methods in properties["Body"]["paths"].items():
                for method, operation in methods.items():
                    uri = operation["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"]
                    if not any(f"${{{alias}}}" in uri for alias in aliases):
                        problems.append(f"{logical_id}: {method.upper()} {path} integrates {uri}")
        elif kind == "AWS::Lambda::Function":
            refresher = properties.get("Environment", {}).get("Variables", {}).get("TOKEN_REFRESHER_FUNCTION")
            if refresher is not None and refresher != REFRESHER_ALIAS_NAME:
                problems.append(f"{logical_id}: TOKEN_REFRESHER_FUNCTION {refresher}")
    return problems


def _names_a_function(target: dict[str, Any], functions: set[str]) -> bool:
    arn = target["Arn"]
    return isinstance(arn, dict) and (arn.get("Ref") in functions or arn.get("Fn::GetAtt", [None])[0] in functions)


@pytest.mark.parametrize("function_id", FUNCTION_IDS)
def test_every_function_is_published_through_its_live_alias(
    sam_template: dict[str, Any], cfn_resources: dict[str, dict[str, Any]], function_id: str
) -> None:
    assert sam_template["Resources"][function_id]["Properties"]["AutoPublishAlias"] == ALIAS
    alias = cfn_resources[alias_id(function_id)]
    assert alias["Type"] == "AWS::Lambda::Alias"
    assert alias["Properties"]["Name"] == ALIAS
    assert alias["Properties"]["FunctionName"] == {"Ref": function_id}
    # Old versions stay (a rollback needs the previous one; CloudFormation never deletes them).
    version_id = alias["Properties"]["FunctionVersion"]["Fn::GetAtt"][0]
    assert cfn_resources[version_id]["DeletionPolicy"] == "Retain"


@pytest.mark.parametrize("function_id", FUNCTION_IDS)
def test_codedeploy_shifts_every_alias_and_rolls_back_on_the_functions_errors_alarm(
    cfn_resources: dict[str, dict[str, Any]], function_id: str
) -> None:
    update = cfn_resources[alias_id(function_id)]["UpdatePolicy"]["CodeDeployLambdaAliasUpdate"]
    group = cfn_resources[update["DeploymentGroupName"]["Ref"]]
    assert group["Type"] == "AWS::CodeDeploy::DeploymentGroup"
    properties = group["Properties"]
    assert properties["ApplicationName"] == update["ApplicationName"]
    assert properties["DeploymentConfigName"] == {
        "Fn::Sub": ["CodeDeployDefault.Lambda${ConfigName}", {"ConfigName": DEPLOYMENT_TYPES[function_id]}]
    }
    assert properties["AlarmConfiguration"] == {
        "Enabled": True,
        "Alarms": [{"Name": {"Ref": errors_alarm_id(cfn_resources, function_id)}}],
    }
    rollback = properties["AutoRollbackConfiguration"]
    assert rollback["Enabled"] is True
    assert {"DEPLOYMENT_STOP_ON_ALARM", "DEPLOYMENT_FAILURE"} <= set(rollback["Events"])
    assert properties["ServiceRoleArn"] == {"Fn::GetAtt": [DEPLOYMENT_ROLE_ID, "Arn"]}


def test_the_consumers_shift_gradually_for_longer_than_an_alarm_period(
    cfn_resources: dict[str, dict[str, Any]],
) -> None:
    # Linear10PercentEvery1Minute: 10 minutes during which CodeDeploy watches the alarm, longer than the
    # consumers' Errors alarms' single 5-minute period, with the new version's share growing every minute.
    for function_id in CONSUMER_IDS:
        alarm = cfn_resources[errors_alarm_id(cfn_resources, function_id)]["Properties"]
        assert alarm["Period"] * alarm["EvaluationPeriods"] <= 10 * 60
        assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")


def test_no_codedeploy_service_role_is_generated(cfn_resources: dict[str, dict[str, Any]]) -> None:
    # SAM would generate one with the AWS managed AWSCodeDeployRoleForLambda (every alias and alarm of the
    # account); DeploymentRole is scoped to these three (test_security.py).
    assert "CodeDeployServiceRole" not in cfn_resources
    assert len(resources_of_type(cfn_resources, "AWS::CodeDeploy::DeploymentGroup")) == len(FUNCTION_IDS)


def test_everything_that_invokes_a_function_invokes_its_live_alias(cfn_resources: dict[str, dict[str, Any]]) -> None:
    assert unaliased_invocations(cfn_resources) == []
    # ... and there are such invokers of each kind the template has.
    kinds = {r["Type"] for r in cfn_resources.values()}
    assert {"AWS::Scheduler::Schedule", "AWS::Lambda::EventSourceMapping", "AWS::Lambda::Permission"} <= kinds


@pytest.mark.parametrize(
    ("logical_id", "path", "value"),
    [
        ("TokenRefresherFunctionRefreshSchedule", ("Target", "Arn"), {"Fn::GetAtt": [REFRESHER_ID, "Arn"]}),
        ("MeterEventsFunctionMeterEvents", ("FunctionName",), {"Ref": "MeterEventsFunction"}),
        ("MeterQueryFunctionListUserMetersPermission", ("FunctionName",), {"Ref": "MeterQueryFunction"}),
        ("TokenRefresherFunctionEventInvokeConfig", ("Qualifier",), "$LATEST"),
        ("MeterQueryFunction", ("Environment", "Variables", "TOKEN_REFRESHER_FUNCTION"), {"Ref": REFRESHER_ID}),
    ],
)
def test_negative_the_invocation_check_sees_the_function_instead_of_its_alias(
    cfn_resources: dict[str, dict[str, Any]], logical_id: str, path: tuple[str, ...], value: Any
) -> None:
    broken = copy.deepcopy(cfn_resources)
    node = broken[logical_id]["Properties"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert unaliased_invocations(broken)


def test_gradual_deployment_can_be_switched_off(sam_template: dict[str, Any]) -> None:
    # For deploying a fix while an Errors alarm is in ALARM (CodeDeploy would refuse to start): the aliases
    # then move at once, and everything still invokes them.
    for value, enabled in (("Enabled", "true"), ("Disabled", "false")):
        evaluator = Evaluator(sam_template, {"GradualDeployment": value})
        for function_id in FUNCTION_IDS:
            preference = sam_template["Resources"][function_id]["Properties"]["DeploymentPreference"]
            assert evaluator.resolve(preference["Enabled"]) == enabled
    resources = transform(sam_template, {"GradualDeployment": "Disabled"})["Resources"]
    assert not resources_of_type(resources, "AWS::CodeDeploy::Application", "AWS::CodeDeploy::DeploymentGroup")
    for function_id in FUNCTION_IDS:
        assert "UpdatePolicy" not in resources[alias_id(function_id)]
    assert unaliased_invocations(resources) == []


def test_the_local_stack_resolves_the_refreshers_alias(sam_template: dict[str, Any]) -> None:
    # local/ runs one code for any qualifier; what matters is that the name resolves to the local refresher.
    endpoints = LocalEndpoints("https://idp.test/token", "https://api.test/", "https://api.test")
    for function in ("meter_events", "meter_query"):
        name, _, qualifier = environment_of(function, endpoints)["TOKEN_REFRESHER_FUNCTION"].partition(":")
        assert (name, qualifier) == (REFRESHER_FUNCTION, ALIAS), function
