"""Checks of template.yaml and of the CloudFormation that the SAM transform makes of it (see conftest.py).

The IAM split is the point of the bundle: only the token refresher may read the client credentials.
The schedule checks pin the arithmetic behind the defaults (see the comments at the top of the template).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.template.checks import log_group_problems, wildcard_problems
from tests.template.conftest import (
    ALIAS,
    CREDENTIALS_ARN,
    CREDENTIALS_SECRET_ID,
    REFRESHER_ID,
    REPO_ROOT,
    TOKEN_SECRET_ID,
    as_list,
    policy_documents,
    possible_statements,
    references,
    resources_of_type,
    statements,
)
from usage_engine.idp import CONNECT_TIMEOUT_SECONDS, MAX_RETRIES, READ_TIMEOUT_SECONDS
from usage_engine.retrying_http import CappedRetry

IAM_POLICY_TYPES = ("AWS::IAM::Role", "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::IAM::RolePolicy")

# The refresher's environment: its contract variables (docs/contracts.md) plus the Powertools ones.
REFRESHER_ENV = {
    "CREDENTIALS_SECRET_ID": CREDENTIALS_ARN,
    "TOKEN_SECRET_ID": {"Ref": TOKEN_SECRET_ID},
    # The explicit parameter when it is set, else the UsageEngineRegion's endpoint (test_parameters.py).
    "USAGE_ENGINE_TOKEN_URL": {
        "Fn::If": [
            "HasTokenUrlOverride",
            {"Ref": "UsageEngineTokenUrl"},
            {"Fn::FindInMap": ["UsageEngineEndpoints", {"Ref": "UsageEngineRegion"}, "TokenUrl"]},
        ]
    },
    "USAGE_ENGINE_AUDIENCE": {
        "Fn::If": [
            "HasAudienceOverride",
            {"Ref": "UsageEngineAudience"},
            {"Fn::FindInMap": ["UsageEngineEndpoints", {"Ref": "UsageEngineRegion"}, "Audience"]},
        ]
    },
    "REFRESH_MARGIN_SECONDS": {"Ref": "RefreshMarginSeconds"},
    "POWERTOOLS_SERVICE_NAME": "token-refresher",
    # One namespace per stack (two stacks, two connections: test_physical_names.py).
    "POWERTOOLS_METRICS_NAMESPACE": {"Fn::Sub": "UsageEngine/${AWS::StackName}"},
    "POWERTOOLS_LOGGER_LOG_EVENT": "false",
    "POWERTOOLS_LOG_LEVEL": {"Ref": "LogLevel"},
    "USAGE_ENGINE_XRAY_SDK": {"Fn::If": ["XRaySdkTracingEnabled", "true", "false"]},
}

# The refresher's retry budget towards the IdP (usage_engine.idp): attempts x (connect + read timeout),
# plus the waits between attempts (exponential backoff up to ~8 s, Retry-After capped at 10 s).
# Read from the code, so the template's timeouts are checked against what the layer really does.
IDP_ATTEMPTS = MAX_RETRIES + 1
IDP_CONNECT_TIMEOUT_S = CONNECT_TIMEOUT_SECONDS
IDP_READ_TIMEOUT_S = READ_TIMEOUT_SECONDS
# The longest wait between attempts: a capped Retry-After or the capped backoff.
IDP_MAX_WAIT_S = max(CappedRetry.MAX_RETRY_AFTER_SECONDS, CappedRetry.MAX_BACKOFF_SECONDS)

TOKEN_LIFETIME_S = 3600
MIN_ATTEMPTS_BEFORE_EXPIRY = 3
MIN_TOKEN_AGE_AT_REFRESH_S = 40 * 60  # at most 1.5 IdP calls per hour

RATE = re.compile(r"^rate\((?P<n>\d+) (?P<unit>minutes?|hours?)\)$")


def rate_seconds(expression: str) -> int:
    match = RATE.match(expression)
    assert match, f"expected a rate(N minutes) default, got {expression!r}"
    return int(match["n"]) * (3600 if match["unit"].startswith("hour") else 60)


def parameter_default(sam_template: dict[str, Any], name: str) -> Any:
    return sam_template["Parameters"][name]["Default"]


def schedule_interval_s(sam_template: dict[str, Any]) -> int:
    return rate_seconds(parameter_default(sam_template, "RefreshScheduleExpression"))


def secret_grants(role: dict[str, Any]) -> set[tuple[str, str]]:
    """(action, resource) pairs of every Secrets Manager permission in the role's inline policies."""
    grants: set[tuple[str, str]] = set()
    for document in policy_documents(role):
        for statement in statements(document):
            actions = [a for a in as_list(statement.get("Action", [])) if a.lower().startswith("secretsmanager:")]
            grants.update(
                (action, json.dumps(resource, sort_keys=True))
                for action in actions
                for resource in as_list(statement.get("Resource", []))
            )
    return grants


# --- IAM ------------------------------------------------------------------------------------------------


def test_refresher_role_grants_exactly_the_secret_permissions_it_needs(cfn_resources, refresher_role_id):
    role = cfn_resources[refresher_role_id]

    credentials = json.dumps(CREDENTIALS_ARN, sort_keys=True)
    token = json.dumps({"Ref": TOKEN_SECRET_ID}, sort_keys=True)
    assert secret_grants(role) == {
        ("secretsmanager:GetSecretValue", credentials),
        ("secretsmanager:GetSecretValue", token),
        ("secretsmanager:PutSecretValue", token),
    }
    for document in policy_documents(role):
        for statement in statements(document):
            assert statement["Effect"] == "Allow"
            assert "NotAction" not in statement
            assert "NotResource" not in statement
    # Logs and X-Ray are granted inline (own log group only), not through AWS managed policies.
    assert not role["Properties"].get("ManagedPolicyArns")


def test_no_wildcard_in_any_policy_action_or_resource(cfn_resources):
    # X-Ray's two write actions are the only ones that may name Resource "*" (no resource-level permissions).
    assert resources_of_type(cfn_resources, *IAM_POLICY_TYPES)
    assert wildcard_problems(cfn_resources) == []


def test_negative_the_wildcard_check_sees_an_unqualified_grant_on_every_version(cfn_resources):
    broken = copy.deepcopy(cfn_resources)
    document = broken["ConsumerPolicy"]["Properties"]["PolicyDocument"]
    document["Statement"][-1]["Resource"] = {"Fn::Sub": "${TokenRefresherFunction.Arn}:*"}
    assert wildcard_problems(broken)


def test_only_the_refresher_can_reach_the_credentials_secret(cfn_resources, refresher_role_id):
    def credentials(node: Any) -> bool:
        # The stack's own secret, or the existing one named by ExistingCredentialsSecretArn.
        return references(node, CREDENTIALS_SECRET_ID) or references(node, "ExistingCredentialsSecretArn")

    for logical_id, resource in resources_of_type(cfn_resources, *IAM_POLICY_TYPES).items():
        if logical_id != refresher_role_id:
            assert not credentials(resource), f"{logical_id} references the credentials"
    for logical_id, resource in resources_of_type(cfn_resources, "AWS::Lambda::Function").items():
        if logical_id != REFRESHER_ID:
            assert not credentials(resource), f"{logical_id} is given the credentials"
    # Nor may a resource policy open the secret to other principals: on it, only Deny statements.
    policies = resources_of_type(cfn_resources, "AWS::SecretsManager::ResourcePolicy")
    on_credentials = [p for p in policies.values() if credentials(p["Properties"]["SecretId"])]
    assert len(on_credentials) == 1
    for statement in possible_statements(on_credentials[0]["Properties"]["ResourcePolicy"]):
        assert statement["Effect"] == "Deny"


def test_secrets_are_created_without_a_value(cfn_resources):
    for logical_id in (CREDENTIALS_SECRET_ID, TOKEN_SECRET_ID):
        secret = cfn_resources[logical_id]
        assert secret["Type"] == "AWS::SecretsManager::Secret"
        assert not {"SecretString", "GenerateSecretString"} & set(secret["Properties"]), logical_id
        assert secret["Properties"].get("Description"), logical_id


# --- Functions ------------------------------------------------------------------------------------------


def test_refresher_is_single_flight_by_default(sam_template, refresher):
    # The parameter, or no reservation at all for 0 (a reservation of 0 would disable the function).
    assert refresher["Properties"]["ReservedConcurrentExecutions"] == {
        "Fn::If": ["HasRefresherReservation", {"Ref": "RefresherReservedConcurrency"}, {"Ref": "AWS::NoValue"}]
    }
    parameter = sam_template["Parameters"]["RefresherReservedConcurrency"]
    assert (parameter["Type"], parameter["Default"], parameter["MinValue"]) == ("Number", 1, 0)


def test_every_function_runs_python_3_13(cfn_resources):
    functions = resources_of_type(cfn_resources, "AWS::Lambda::Function")
    assert REFRESHER_ID in functions
    for logical_id, function in functions.items():
        assert function["Properties"].get("Runtime") == "python3.13", logical_id


def test_every_function_has_a_log_group_with_retention(cfn_resources):
    # Of its own, through LoggingConfig: Lambda's default group would keep the logs forever, unencrypted by the
    # bundle's key. This holds for a consumer added to the template too (test_added_consumer.py).
    assert log_group_problems(cfn_resources) == []


def test_negative_the_log_check_sees_a_function_without_its_own_log_group(cfn_resources):
    broken = copy.deepcopy(cfn_resources)
    del broken["MeterQueryFunction"]["Properties"]["LoggingConfig"]
    assert log_group_problems(broken)


def test_refresher_timeout_exceeds_its_whole_retry_budget(refresher):
    attempts = IDP_ATTEMPTS * (IDP_CONNECT_TIMEOUT_S + IDP_READ_TIMEOUT_S)
    waits = (IDP_ATTEMPTS - 1) * IDP_MAX_WAIT_S
    timeout = refresher["Properties"]["Timeout"]
    assert timeout > attempts  # the figure from the brief: 4 x (3.05 + 10) s
    assert timeout > attempts + waits + 10  # ... plus waits and a margin for the Secrets Manager calls
    assert timeout <= 900


def test_refresher_environment_is_exactly_the_contract(refresher):
    assert refresher["Properties"]["Environment"]["Variables"] == REFRESHER_ENV


def test_functions_share_one_architecture_parameter_and_the_layers(sam_template, cfn_resources):
    # The layers serve both architectures (tests/template/test_lean_layer.py); the functions pick one.
    for logical_id, function in resources_of_type(cfn_resources, "AWS::Lambda::Function").items():
        assert function["Properties"]["Architectures"] == [{"Ref": "Architecture"}], logical_id
        # The transform suffixes a layer's logical id with a hash of its content.
        usage_engine, xray_sdk = function["Properties"]["Layers"]
        assert usage_engine["Ref"].startswith("UsageEngineLayer"), logical_id
        condition, then, otherwise = xray_sdk["Fn::If"]
        assert (condition, otherwise) == ("XRaySdkTracingEnabled", {"Ref": "AWS::NoValue"}), logical_id
        assert then["Ref"].startswith("XRaySdkLayer"), logical_id


def test_makefile_builds_have_their_target(sam_template):
    built = 0
    for logical_id, resource in sam_template["Resources"].items():
        if resource.get("Metadata", {}).get("BuildMethod") != "makefile":
            continue
        properties = resource["Properties"]
        makefile = Path(REPO_ROOT, properties.get("CodeUri") or properties["ContentUri"], "Makefile")
        assert re.search(rf"^build-{logical_id}:", makefile.read_text(), re.MULTILINE), makefile
        built += 1
    assert built >= 2


# --- Schedule -------------------------------------------------------------------------------------------


def test_schedule_uses_the_parameters(sam_template, refresher, refresher_schedule):
    assert refresher_schedule["Properties"]["ScheduleExpression"] == {"Ref": "RefreshScheduleExpression"}
    env = refresher["Properties"]["Environment"]["Variables"]
    assert env["REFRESH_MARGIN_SECONDS"] == {"Ref": "RefreshMarginSeconds"}
    margin = sam_template["Parameters"]["RefreshMarginSeconds"]
    assert margin["MinValue"] <= parameter_default(sam_template, "RefreshMarginSeconds") <= margin["MaxValue"]


def test_default_margin_leaves_three_attempts_before_expiry(sam_template):
    interval = schedule_interval_s(sam_template)
    margin = int(parameter_default(sam_template, "RefreshMarginSeconds"))
    assert margin > MIN_ATTEMPTS_BEFORE_EXPIRY * interval


def test_default_margin_keeps_idp_calls_at_most_one_and_a_half_per_hour(sam_template):
    margin = int(parameter_default(sam_template, "RefreshMarginSeconds"))
    assert TOKEN_LIFETIME_S - margin >= MIN_TOKEN_AGE_AT_REFRESH_S
    assert TOKEN_LIFETIME_S / (TOKEN_LIFETIME_S - margin) <= 1.5


def test_schedule_passes_the_scheduled_reason(refresher_schedule):
    target = refresher_schedule["Properties"]["Target"]
    assert json.loads(target["Input"]) == {"reason": "scheduled"}


def test_schedule_retries_end_before_the_next_run(sam_template, cfn_resources, refresher_schedule):
    interval = schedule_interval_s(sam_template)
    target = refresher_schedule["Properties"]["Target"]
    assert target["RetryPolicy"]["MaximumRetryAttempts"] == 2
    assert target["RetryPolicy"]["MaximumEventAgeInSeconds"] < interval
    dead_letter_arn = target["DeadLetterConfig"]["Arn"]
    assert cfn_resources[dead_letter_arn["Fn::GetAtt"][0]]["Type"] == "AWS::SQS::Queue"
    invoke_configs = [
        config
        for config in resources_of_type(cfn_resources, "AWS::Lambda::EventInvokeConfig").values()
        if config["Properties"]["FunctionName"] == {"Ref": REFRESHER_ID}
    ]
    assert len(invoke_configs) == 1
    assert invoke_configs[0]["Properties"]["MaximumEventAgeInSeconds"] < interval
    # The schedule invokes the live alias, so the retry and destination settings are the alias's.
    assert invoke_configs[0]["Properties"]["Qualifier"] == ALIAS


# --- Parameters and outputs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "attribute"),
    [("UsageEngineTokenUrl", "TokenUrl"), ("UsageEngineAudience", "Audience"), ("UsageEngineApiUrl", "ApiUrl")],
)
def test_url_parameters_require_https(sam_template, name, attribute):
    parameter = sam_template["Parameters"][name]
    pattern = re.compile(parameter["AllowedPattern"])
    # Empty (the default) means "the UsageEngineRegion's endpoint"; an override must be https.
    assert parameter["Default"] == ""
    assert pattern.match("")
    for endpoints in sam_template["Mappings"]["UsageEngineEndpoints"].values():
        assert pattern.match(endpoints[attribute]), endpoints[attribute]
        assert not pattern.match(endpoints[attribute].replace("https://", "http://", 1))


def test_every_parameter_is_described(sam_template):
    for name, parameter in sam_template["Parameters"].items():
        assert parameter.get("Description"), name


def test_outputs_name_what_operators_and_consumers_need(cfn_template):
    assert {
        "CredentialsSecretArn",
        "TokenSecretArn",
        "TokenRefresherFunctionName",
        "TokenRefresherFunctionArn",
        "UsageEngineLayerArn",
    } <= set(cfn_template["Outputs"])
