"""Least privilege, checked on the CloudFormation that the SAM transform makes of template.yaml.

Every role is compared statement by statement with what its function needs (EXPECTED_GRANTS): a new action,
a wider resource or a dropped condition fails. The checks are plain functions returning problems, so the
negative tests can prove they catch a consumer role that is given the credentials secret or a `*` resource.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.template.conftest import (
    CONSUMER_IDS,
    CREDENTIALS_ARN,
    CREDENTIALS_SECRET_ID,
    FUNCTION_IDS,
    KEY_ARN,
    REFRESHER_ID,
    TOKEN_SECRET_ID,
    as_list,
    policy_documents,
    possible_statements,
    references,
    resources_of_type,
    role_id_of,
    statements,
)

IAM_TYPES = ("AWS::IAM::Role", "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::IAM::RolePolicy")
SCHEDULE_ROLE_ID = "RefreshScheduleRole"

TOKEN = {"Ref": TOKEN_SECRET_ID}
REFRESHER_ARN = {"Fn::GetAtt": [REFRESHER_ID, "Arn"]}
VIA_SECRETS_MANAGER = {"Fn::Sub": "secretsmanager.${AWS::Region}.amazonaws.com"}
VIA_SQS = {"Fn::Sub": "sqs.${AWS::Region}.amazonaws.com"}
XRAY = "*"


def arn(logical_id: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [logical_id, "Arn"]}


def via_secrets_manager(*secrets: Any) -> dict[str, Any]:
    context = list(secrets) if len(secrets) > 1 else secrets[0]
    return {"StringEquals": {"kms:ViaService": VIA_SECRETS_MANAGER, "kms:EncryptionContext:SecretARN": context}}


VIA_SQS_ONLY = {"StringEquals": {"kms:ViaService": VIA_SQS}}
VIA_DYNAMODB_ONLY = {"StringEquals": {"kms:ViaService": {"Fn::Sub": "dynamodb.${AWS::Region}.amazonaws.com"}}}


def grants(*entries: tuple[tuple[str, ...], Any, Any]) -> set[tuple[str, str, str]]:
    """(action, resource, condition) triples, one per action, with JSON-encoded resource and condition."""
    return {
        (action, json.dumps(resource, sort_keys=True), json.dumps(condition, sort_keys=True))
        for actions, resource, condition in entries
        for action in actions
    }


def common(log_group_id: str) -> set[tuple[str, str, str]]:
    """What every function needs: its own log group (nothing else) and X-Ray (Tracing: Active)."""
    return grants(
        (("logs:CreateLogStream", "logs:PutLogEvents"), arn(log_group_id), None),
        (("xray:PutTraceSegments", "xray:PutTelemetryRecords"), XRAY, None),
    )


def consumer(log_group_id: str) -> set[tuple[str, str, str]]:
    """What every consumer needs: read the token (and decrypt it, through Secrets Manager only), ask the
    refresher for a new one."""
    return common(log_group_id) | grants(
        (("secretsmanager:GetSecretValue",), TOKEN, None),
        (("kms:Decrypt",), KEY_ARN, via_secrets_manager(TOKEN)),
        (("lambda:InvokeFunction",), REFRESHER_ARN, None),
    )


EXPECTED_GRANTS: dict[str, set[tuple[str, str, str]]] = {
    REFRESHER_ID: common("TokenRefresherLogGroup")
    | grants(
        (("secretsmanager:GetSecretValue",), CREDENTIALS_ARN, None),
        (("secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"), TOKEN, None),
        (("kms:Decrypt",), KEY_ARN, via_secrets_manager(CREDENTIALS_ARN, TOKEN)),
        (("kms:GenerateDataKey",), KEY_ARN, via_secrets_manager(TOKEN)),
        # The EventInvokeConfig OnFailure destination is written with the function's role.
        (("sqs:SendMessage",), arn("RefresherFailureQueue"), None),
        (("kms:GenerateDataKey", "kms:Decrypt"), KEY_ARN, VIA_SQS_ONLY),
    ),
    "MeterEventsFunction": consumer("MeterEventsLogGroup")
    | grants(
        # The SQS event source mapping polls with the function's role (what AWSLambdaSQSQueueExecutionRole
        # would grant on every queue, here on this one).
        (("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"), arn("MeterEventsQueue"), None),
        # Malformed events go to the DLQ with their reason.
        (("sqs:SendMessage",), arn("MeterEventsDeadLetterQueue"), None),
        (("kms:Decrypt", "kms:GenerateDataKey"), KEY_ARN, VIA_SQS_ONLY),
        # The meter state table keeps each meter's events in order; its key is used through DynamoDB only.
        (("dynamodb:UpdateItem", "dynamodb:PutItem", "dynamodb:DeleteItem"), arn("MeterStateTable"), None),
        (("kms:Decrypt", "kms:DescribeKey"), KEY_ARN, VIA_DYNAMODB_ONLY),
    ),
    "MeterQueryFunction": consumer("MeterQueryLogGroup"),
}

EXPECTED_SCHEDULE_GRANTS = grants(
    (("lambda:InvokeFunction",), REFRESHER_ARN, None),
    (("sqs:SendMessage",), arn("RefreshScheduleDeadLetterQueue"), None),
    (("kms:GenerateDataKey", "kms:Decrypt"), KEY_ARN, VIA_SQS_ONLY),
)


def role_grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    found: set[tuple[str, str, str]] = set()
    for document in policy_documents(role):
        for statement in statements(document):
            assert statement["Effect"] == "Allow"
            assert not {"NotAction", "NotResource", "Principal", "NotPrincipal"} & set(statement)
            condition = json.dumps(statement.get("Condition"), sort_keys=True)
            for action in as_list(statement["Action"]):
                for resource in as_list(statement["Resource"]):
                    found.add((action, json.dumps(resource, sort_keys=True), condition))
    return found


def trusted_services(role: dict[str, Any]) -> list[tuple[str, Any]]:
    trust = role["Properties"]["AssumeRolePolicyDocument"]
    return [
        (statement["Principal"]["Service"], statement.get("Condition"))
        for statement in statements(trust)
        if statement["Effect"] == "Allow" and statement["Action"] == "sts:AssumeRole"
    ]


# --- Checks that return problems (the negative tests feed them broken templates) -------------------------


def credentials_exposure(resources: dict[str, dict[str, Any]]) -> list[str]:
    """Ways a consumer role could read the credentials secret: a reference to it, a secretsmanager action on a
    wildcard resource, a wildcard secretsmanager action, or any managed policy (which we cannot inspect)."""
    problems = []
    for function_id in CONSUMER_IDS:
        role_id = role_id_of(resources, function_id)
        role = resources[role_id]
        if role["Properties"].get("ManagedPolicyArns"):
            problems.append(f"{role_id}: managed policies {role['Properties']['ManagedPolicyArns']}")
        attached = [
            policy
            for policy in resources_of_type(resources, "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy").values()
            if any(references(r, role_id) for r in policy["Properties"].get("Roles", []))
        ]
        for document in [*policy_documents(role), *(d for p in attached for d in policy_documents(p))]:
            for statement in statements(document):
                if statement.get("Effect") != "Allow":
                    continue
                actions = [a.lower() for a in as_list(statement.get("Action", []))]
                secret_actions = [a for a in actions if a.startswith("secretsmanager:") or a == "*"]
                if "NotAction" in statement or "NotResource" in statement:
                    problems.append(f"{role_id}: NotAction/NotResource statement")
                if references(statement, CREDENTIALS_SECRET_ID) or references(
                    statement, "ExistingCredentialsSecretArn"
                ):
                    problems.append(f"{role_id}: statement names the credentials secret: {statement}")
                if any("*" in a for a in secret_actions):
                    problems.append(f"{role_id}: wildcard secretsmanager action {secret_actions}")
                if secret_actions and any("*" in text for text in _strings(statement.get("Resource", []))):
                    problems.append(f"{role_id}: secretsmanager on a wildcard resource: {statement}")
    return problems


def _strings(node: Any) -> list[str]:
    """Every string in node, inside intrinsic functions too (an Fn::Sub ARN can hold a wildcard)."""
    if isinstance(node, dict):
        return [text for value in node.values() for text in _strings(value)]
    if isinstance(node, list):
        return [text for item in node for text in _strings(item)]
    return [node] if isinstance(node, str) else []


def only_refresher_reads_credentials(resources: dict[str, dict[str, Any]]) -> list[str]:
    """The credentials secret's resource policy denies GetSecretValue to every principal except the
    refresher's role and the optional break-glass principal."""
    refresher_role = {"Fn::GetAtt": [role_id_of(resources, REFRESHER_ID), "Arn"]}
    policies = [
        p
        for p in resources_of_type(resources, "AWS::SecretsManager::ResourcePolicy").values()
        if p["Properties"]["SecretId"] == {"Ref": CREDENTIALS_SECRET_ID}
    ]
    if len(policies) != 1:
        return [f"expected one resource policy on the credentials secret, found {len(policies)}"]
    expected_exempt = {
        "Fn::If": [
            "HasSecretsAdmin",
            [refresher_role, {"Ref": "SecretsAdminPrincipalArn"}],
            [refresher_role],
        ]
    }
    for statement in possible_statements(policies[0]["Properties"]["ResourcePolicy"]):
        if (
            statement["Effect"] == "Deny"
            and statement.get("Principal") == "*"
            and "secretsmanager:GetSecretValue" in as_list(statement["Action"])
            and statement.get("Condition") == {"ArnNotEquals": {"aws:PrincipalArn": expected_exempt}}
        ):
            return []
    return ["no Deny of GetSecretValue for every principal but the refresher's role"]


# --- Roles ----------------------------------------------------------------------------------------------


def test_every_role_is_declared_and_no_other_iam_resource_exists(cfn_resources):
    # A function without its own Role would get a SAM-generated one with AWS managed policies on "*".
    roles = {role_id_of(cfn_resources, function_id) for function_id in FUNCTION_IDS}
    assert len(roles) == len(FUNCTION_IDS), "each function has a role of its own"
    assert set(resources_of_type(cfn_resources, *IAM_TYPES)) == roles | {SCHEDULE_ROLE_ID}
    functions = resources_of_type(cfn_resources, "AWS::Lambda::Function")
    assert set(functions) == set(FUNCTION_IDS)


@pytest.mark.parametrize("function_id", FUNCTION_IDS)
def test_each_function_role_grants_exactly_what_the_function_needs(cfn_resources, function_id):
    role = cfn_resources[role_id_of(cfn_resources, function_id)]
    assert role_grants(role) == EXPECTED_GRANTS[function_id]
    assert not role["Properties"].get("ManagedPolicyArns")
    assert trusted_services(role) == [("lambda.amazonaws.com", None)]


def test_schedule_role_only_invokes_the_refresher_and_writes_its_dlq(cfn_resources, refresher_schedule):
    assert refresher_schedule["Properties"]["Target"]["RoleArn"] == arn(SCHEDULE_ROLE_ID)
    role = cfn_resources[SCHEDULE_ROLE_ID]
    assert role_grants(role) == EXPECTED_SCHEDULE_GRANTS
    # Confused-deputy protection: only schedules of this account may use the role.
    assert trusted_services(role) == [
        ("scheduler.amazonaws.com", {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}})
    ]


def test_consumers_cannot_read_the_credentials_secret(cfn_resources):
    assert credentials_exposure(cfn_resources) == []
    assert only_refresher_reads_credentials(cfn_resources) == []


def _with_statement(resources: dict[str, Any], role_id: str, statement: dict[str, Any]) -> dict[str, Any]:
    broken = copy.deepcopy(resources)
    broken[role_id]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"].append(statement)
    return broken


@pytest.mark.parametrize("function_id", CONSUMER_IDS)
@pytest.mark.parametrize(
    "statement",
    [
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": {"Ref": CREDENTIALS_SECRET_ID}},
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": CREDENTIALS_ARN},
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "*"},
        {"Effect": "Allow", "Action": "secretsmanager:*", "Resource": {"Ref": TOKEN_SECRET_ID}},
        {
            "Effect": "Allow",
            "Action": ["secretsmanager:GetSecretValue"],
            "Resource": {"Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:*"},
        },
    ],
    ids=["credentials-ref", "credentials-arn", "star-resource", "star-action", "arn-wildcard"],
)
def test_negative_the_check_catches_a_consumer_given_the_credentials(cfn_resources, function_id, statement):
    broken = _with_statement(cfn_resources, role_id_of(cfn_resources, function_id), statement)
    assert credentials_exposure(broken)
    # ... and the exact-grants test would fail too.
    assert role_grants(broken[role_id_of(broken, function_id)]) != EXPECTED_GRANTS[function_id]


def test_negative_the_check_catches_a_managed_policy_on_a_consumer(cfn_resources):
    broken = copy.deepcopy(cfn_resources)
    role_id = role_id_of(broken, "MeterQueryFunction")
    broken[role_id]["Properties"]["ManagedPolicyArns"] = ["arn:aws:iam::aws:policy/SecretsManagerReadWrite"]
    assert credentials_exposure(broken)


def test_negative_the_check_catches_an_open_credentials_policy(cfn_resources):
    broken = copy.deepcopy(cfn_resources)
    broken["CredentialsSecretPolicy"]["Properties"]["ResourcePolicy"]["Statement"][0]["Condition"] = {
        "ArnNotEquals": {"aws:PrincipalArn": [{"Fn::GetAtt": ["MeterQueryRole", "Arn"]}]}
    }
    assert only_refresher_reads_credentials(broken)


# --- Secrets, key ---------------------------------------------------------------------------------------


def test_both_secrets_are_encrypted_with_the_key(cfn_resources):
    for logical_id in (CREDENTIALS_SECRET_ID, TOKEN_SECRET_ID):
        assert cfn_resources[logical_id]["Properties"]["KmsKeyId"] == KEY_ARN, logical_id


def test_the_stack_creates_the_credentials_secret_only_without_an_existing_one(cfn_resources):
    for logical_id in (CREDENTIALS_SECRET_ID, "CredentialsSecretPolicy"):
        assert cfn_resources[logical_id]["Condition"] == "CreateCredentialsSecret"


def test_key_rotates_and_its_policy_scopes_every_service(cfn_resources):
    key = cfn_resources["EncryptionKey"]
    assert key["Condition"] == "CreateKmsKey"
    properties = key["Properties"]
    assert properties["EnableKeyRotation"] is True
    by_sid = {s["Sid"]: s for s in statements(properties["KeyPolicy"])}
    root = by_sid["AccountAdministersTheKeyAndGrantsItsUseThroughIam"]
    assert root["Principal"] == {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}}
    services = {}
    for statement in statements(properties["KeyPolicy"]):
        assert statement["Effect"] == "Allow"
        assert statement["Principal"] != "*"
        assert statement["Principal"] != {"AWS": "*"}
        if "Service" in statement["Principal"]:
            service = statement["Principal"]["Service"]
            services[json.dumps(service)] = statement
            assert not any(a in ("kms:*", "*") for a in as_list(statement["Action"]))
    logs = services[json.dumps({"Fn::Sub": "logs.${AWS::Region}.amazonaws.com"})]
    assert set(logs["Condition"]["ArnLike"]) == {"kms:EncryptionContext:aws:logs:arn"}
    alarms = services[json.dumps("cloudwatch.amazonaws.com")]
    assert alarms["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert "aws:SourceArn" in alarms["Condition"]["ArnLike"]
    events = services[json.dumps("events.amazonaws.com")]
    assert set(as_list(events["Action"])) == {"kms:Decrypt", "kms:GenerateDataKey"}
    assert len(services) == 3


# --- Consumers' event sources ---------------------------------------------------------------------------


def test_only_the_meter_events_rule_may_send_to_the_queue(cfn_resources):
    (policy,) = resources_of_type(cfn_resources, "AWS::SQS::QueuePolicy").values()
    (statement,) = statements(policy["Properties"]["PolicyDocument"])
    assert statement["Effect"] == "Allow"
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": arn("MeterEventsRule")}}


def test_meter_query_api_requires_iam_authorization(cfn_resources):
    api = cfn_resources["MeterQueryApi"]["Properties"]["Body"]
    operation = api["paths"]["/users/{userId}/meters"]["get"]
    assert operation["security"] == [{"AWS_IAM": []}]
    assert api["components"]["securitySchemes"]["AWS_IAM"]["x-amazon-apigateway-authtype"] == "awsSigv4"
    assert list(api["paths"]) == ["/users/{userId}/meters"]
    assert list(api["paths"]["/users/{userId}/meters"]) == ["get"]
