"""Least privilege, checked on the CloudFormation that the SAM transform makes of template.yaml.

Every role is compared statement by statement with what its function needs (EXPECTED_GRANTS), counting the
managed policies of this template it attaches (ConsumerPolicy): a new action, a wider resource or a dropped
condition fails. The checks are plain functions returning problems (checks.py), so the negative tests can prove
they catch a consumer role that is given the credentials secret or a `*` resource.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.template.checks import (
    SCHEDULE_ROLE_ID,
    credentials_exposure,
    iam_inventory_problems,
    role_documents,
)
from tests.template.conftest import (
    CONSUMER_IDS,
    CONSUMER_POLICY_ID,
    CREDENTIALS_ARN,
    CREDENTIALS_SECRET_ID,
    DEPLOYMENT_ROLE_ID,
    FUNCTION_IDS,
    KEY_ARN,
    REFRESHER_ALIAS_ARN,
    REFRESHER_ARN,
    REFRESHER_ID,
    TOKEN_SECRET_ID,
    as_list,
    possible_statements,
    resources_of_type,
    role_id_of,
    statements,
)

TOKEN = {"Ref": TOKEN_SECRET_ID}
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


# ConsumerPolicy, what every consumer needs (the platform contract): read the token (and decrypt it, through
# Secrets Manager and for that secret only), ask the refresher for a new one (its live alias, and the function
# for callers that name it unqualified). Nothing else.
CONSUMER_POLICY_GRANTS = grants(
    (("secretsmanager:GetSecretValue",), TOKEN, None),
    (("kms:Decrypt",), KEY_ARN, via_secrets_manager(TOKEN)),
    (("lambda:InvokeFunction",), REFRESHER_ARN, None),
    (("lambda:InvokeFunction",), REFRESHER_ALIAS_ARN, None),
)


def consumer(log_group_id: str) -> set[tuple[str, str, str]]:
    """What every built-in consumer has: ConsumerPolicy, its log group and X-Ray."""
    return common(log_group_id) | CONSUMER_POLICY_GRANTS


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

# The schedule targets the refresher's live alias, and may invoke nothing else.
EXPECTED_SCHEDULE_GRANTS = grants(
    (("lambda:InvokeFunction",), REFRESHER_ALIAS_ARN, None),
    (("sqs:SendMessage",), arn("RefreshScheduleDeadLetterQueue"), None),
    (("kms:GenerateDataKey", "kms:Decrypt"), KEY_ARN, VIA_SQS_ONLY),
)


def document_grants(documents: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    found: set[tuple[str, str, str]] = set()
    for document in documents:
        for statement in statements(document):
            assert statement["Effect"] == "Allow"
            assert not {"NotAction", "NotResource", "Principal", "NotPrincipal"} & set(statement)
            condition = json.dumps(statement.get("Condition"), sort_keys=True)
            for action in as_list(statement["Action"]):
                for resource in as_list(statement["Resource"]):
                    found.add((action, json.dumps(resource, sort_keys=True), condition))
    return found


def role_grants(resources: dict[str, dict[str, Any]], role_id: str) -> set[tuple[str, str, str]]:
    """What a role may do: its inline policies and the managed policies of this template it attaches."""
    return document_grants(role_documents(resources, role_id))


def trusted_services(role: dict[str, Any]) -> list[tuple[str, Any]]:
    trust = role["Properties"]["AssumeRolePolicyDocument"]
    return [
        (statement["Principal"]["Service"], statement.get("Condition"))
        for statement in statements(trust)
        if statement["Effect"] == "Allow" and statement["Action"] == "sts:AssumeRole"
    ]


# --- Checks that return problems (the negative tests feed them broken templates) -------------------------


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
    # A built-in function without its own Role would get a SAM-generated one with AWS managed policies on "*".
    # (A consumer added to the template may have a generated one: test_added_consumer.py.)
    assert iam_inventory_problems(cfn_resources) == []
    roles = {role_id_of(cfn_resources, function_id) for function_id in FUNCTION_IDS}
    assert len(roles) == len(FUNCTION_IDS), "each function has a role of its own"
    assert set(resources_of_type(cfn_resources, "AWS::Lambda::Function")) == set(FUNCTION_IDS)


@pytest.mark.parametrize("function_id", FUNCTION_IDS)
def test_each_function_role_grants_exactly_what_the_function_needs(cfn_resources, function_id):
    role_id = role_id_of(cfn_resources, function_id)
    assert role_grants(cfn_resources, role_id) == EXPECTED_GRANTS[function_id]
    # The consumers' share of the contract comes from ConsumerPolicy, which they attach; nothing else is attached.
    attached = [{"Ref": CONSUMER_POLICY_ID}] if function_id in CONSUMER_IDS else []
    assert cfn_resources[role_id]["Properties"].get("ManagedPolicyArns", []) == attached
    assert trusted_services(cfn_resources[role_id]) == [("lambda.amazonaws.com", None)]


def test_negative_the_inventory_sees_a_generated_role_on_a_built_in_function(cfn_resources):
    broken = copy.deepcopy(cfn_resources)
    broken["MeterQueryFunction"]["Properties"]["Role"] = arn("MeterQueryFunctionRole")
    broken["MeterQueryFunctionRole"] = copy.deepcopy(broken["MeterQueryRole"])
    broken["MeterQueryFunctionRole"]["Properties"]["ManagedPolicyArns"].append(
        "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
    )
    del broken["MeterQueryRole"]
    assert iam_inventory_problems(broken)


def test_schedule_role_only_invokes_the_refresher_and_writes_its_dlq(cfn_resources, refresher_schedule):
    assert refresher_schedule["Properties"]["Target"]["RoleArn"] == arn(SCHEDULE_ROLE_ID)
    assert role_grants(cfn_resources, SCHEDULE_ROLE_ID) == EXPECTED_SCHEDULE_GRANTS
    role = cfn_resources[SCHEDULE_ROLE_ID]
    # Confused-deputy protection: only schedules of this account may use the role.
    assert trusted_services(role) == [
        ("scheduler.amazonaws.com", {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}})
    ]


# --- ConsumerPolicy: the consumer share of the platform contract ------------------------------------------


def consumer_policy_problems(resources: dict[str, dict[str, Any]]) -> list[str]:
    """ConsumerPolicy grants exactly CONSUMER_POLICY_GRANTS: no other action, resource or condition, no
    wildcard action, no NotAction/NotResource, and its name (if it has one) is the stack's own."""
    policy = resources[CONSUMER_POLICY_ID]
    if policy["Type"] != "AWS::IAM::ManagedPolicy":
        return [f"{CONSUMER_POLICY_ID} is a {policy['Type']}"]
    properties = policy["Properties"]
    problems = []
    name = properties.get("ManagedPolicyName")
    if name is not None and "${AWS::StackName}" not in json.dumps(name):
        problems.append(f"fixed name {name!r}: a second stack in the account would collide")
    for statement in statements(properties["PolicyDocument"]):
        if statement.get("Effect") != "Allow":
            problems.append(f"not an Allow statement: {statement}")
        if {"NotAction", "NotResource", "Principal", "NotPrincipal"} & set(statement):
            problems.append(f"NotAction/NotResource/Principal in {statement}")
        problems += [f"wildcard action {a!r}" for a in as_list(statement.get("Action", [])) if "*" in a]
    if problems:
        return problems
    found = document_grants([properties["PolicyDocument"]])
    problems += [f"grants more: {grant}" for grant in sorted(found - CONSUMER_POLICY_GRANTS)]
    problems += [f"grants less: {grant}" for grant in sorted(CONSUMER_POLICY_GRANTS - found)]
    return problems


def test_consumer_policy_grants_exactly_the_contract(cfn_resources):
    assert consumer_policy_problems(cfn_resources) == []
    properties = cfn_resources[CONSUMER_POLICY_ID]["Properties"]
    assert properties.get("Description")
    # Attached by the consumers' roles, never attaching itself to anything.
    assert not {"Roles", "Users", "Groups"} & set(properties)


@pytest.mark.parametrize(
    "change",
    [
        {"Action": "lambda:*"},
        {"Action": ["lambda:InvokeFunction", "lambda:InvokeFunctionUrl"]},
        {"Resource": "*"},
        {"Resource": [REFRESHER_ARN, REFRESHER_ALIAS_ARN, {"Fn::Sub": "${TokenRefresherFunction.Arn}:*"}]},
        {"NotResource": REFRESHER_ARN},
    ],
    ids=["wildcard-action", "extra-action", "wildcard-resource", "every-version", "not-resource"],
)
def test_negative_the_consumer_policy_check_sees_a_wider_grant(cfn_resources, change):
    broken = copy.deepcopy(cfn_resources)
    (invoke,) = [
        s
        for s in broken[CONSUMER_POLICY_ID]["Properties"]["PolicyDocument"]["Statement"]
        if s["Sid"] == "AskForATokenRefresh"
    ]
    invoke.update(change)
    assert consumer_policy_problems(broken)


def test_negative_the_consumer_policy_check_sees_a_dropped_condition(cfn_resources):
    broken = copy.deepcopy(cfn_resources)
    document = broken[CONSUMER_POLICY_ID]["Properties"]["PolicyDocument"]
    (statement,) = [s for s in document["Statement"] if s["Sid"] == "DecryptToken"]
    del statement["Condition"]["StringEquals"]["kms:EncryptionContext:SecretARN"]
    assert consumer_policy_problems(broken)


def test_negative_the_consumer_policy_check_sees_a_fixed_name(cfn_resources):
    broken = copy.deepcopy(cfn_resources)
    broken[CONSUMER_POLICY_ID]["Properties"]["ManagedPolicyName"] = "usage-engine-consumer"
    assert consumer_policy_problems(broken)


# --- CodeDeploy's role (GradualDeployment) ----------------------------------------------------------------

ERRORS_ALARM_IDS = ("TokenRefresherErrorsAlarm", "MeterEventsErrorsAlarm", "MeterQueryErrorsAlarm")

EXPECTED_DEPLOYMENT_GRANTS = grants(
    *(
        (("lambda:GetAlias", "lambda:UpdateAlias", "lambda:GetProvisionedConcurrencyConfig"), resource, None)
        for function_id in FUNCTION_IDS
        for resource in (arn(function_id), {"Fn::Sub": f"${{{function_id}.Arn}}:live"})
    ),
    *((("cloudwatch:DescribeAlarms",), arn(alarm_id), None) for alarm_id in ERRORS_ALARM_IDS),
)


def test_deployment_role_only_shifts_the_live_aliases_and_reads_their_alarms(cfn_resources):
    assert role_grants(cfn_resources, DEPLOYMENT_ROLE_ID) == EXPECTED_DEPLOYMENT_GRANTS
    role = cfn_resources[DEPLOYMENT_ROLE_ID]
    assert not role["Properties"].get("ManagedPolicyArns")
    assert trusted_services(role) == [
        ("codedeploy.amazonaws.com", {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}})
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
    assert role_grants(broken, role_id_of(broken, function_id)) != EXPECTED_GRANTS[function_id]


def test_negative_the_check_catches_the_credentials_in_the_consumer_policy(cfn_resources):
    broken = copy.deepcopy(cfn_resources)
    broken[CONSUMER_POLICY_ID]["Properties"]["PolicyDocument"]["Statement"].append(
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": CREDENTIALS_ARN}
    )
    assert credentials_exposure(broken)


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
