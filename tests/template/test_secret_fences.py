"""The secrets' resource policies, evaluated for concrete requests: who may set the token, who may read and who
may store the client credentials, and that CloudFormation can still update and delete both secrets.

Each policy is resolved for a parameter set (conftest.Evaluator) and evaluated by a small model of IAM's
explicit-deny logic that knows only the condition operators the template uses (any other fails the test).
The checks return problems, so the negative tests can prove they catch a weakened or over-tight policy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import pytest
from cfnlint.schema import PROVIDER_SCHEMA_MANAGER  # type: ignore[import-untyped]

from tests.template.conftest import REGION, Evaluator, as_list, statements

# How the Evaluator renders the roles' ARNs (!GetAtt X.Arn stays symbolic).
REFRESHER = "<TokenRefresherRole.Arn>"
CONSUMER = "<MeterQueryRole.Arn>"
ADMIN = "arn:aws:iam::123456789012:role/break-glass"
OPERATOR = "arn:aws:iam::123456789012:role/usage-engine-operator"
ADMINISTRATOR = "arn:aws:iam::123456789012:role/Administrator"
ROOT = "arn:aws:iam::123456789012:root"
DEPLOYER = "arn:aws:iam::123456789012:role/deployer"
CLOUDFORMATION = ("cloudformation.amazonaws.com",)

# Every API that sets or replaces what readers of the secret get (see docs/operations.md for the ones left
# open and why): a new version, a value in UpdateSecret, AWSCURRENT moved to an older version, a rotation
# function's writes, and (token only: it has replicas) a replica detached from the refresher's writes.
CREDENTIALS_VALUE_WRITES = (
    "secretsmanager:PutSecretValue",
    "secretsmanager:UpdateSecret",
    "secretsmanager:UpdateSecretVersionStage",
    "secretsmanager:RotateSecret",
)
TOKEN_VALUE_WRITES = (*CREDENTIALS_VALUE_WRITES, "secretsmanager:StopReplicationToReplica")
# What an operator does to manage a secret without setting its value: never denied (no lock-out).
MANAGEMENT = (
    "secretsmanager:DescribeSecret",
    "secretsmanager:PutResourcePolicy",
    "secretsmanager:DeleteResourcePolicy",
    "secretsmanager:DeleteSecret",
    "secretsmanager:TagResource",
)


@dataclass(frozen=True)
class Request:
    action: str
    principal: str
    called_via: tuple[str, ...] = ()


def _condition_holds(operator: str, key: str, values: Any, request: Request) -> bool:
    values = as_list(values)
    if (operator, key) == ("ArnNotEquals", "aws:PrincipalArn"):
        return request.principal not in values
    if (operator, key) == ("ForAllValues:StringNotEquals", "aws:CalledVia"):
        # True for a direct call: ForAllValues over an absent key is true.
        return all(service not in values for service in request.called_via)
    raise AssertionError(f"the model does not know {operator} on {key}")


def denied(policy: dict[str, Any], request: Request) -> bool:
    """Whether an explicit Deny of the resource policy matches the request."""
    for statement in statements(policy):
        assert statement["Principal"] == "*", statement
        assert statement["Resource"] == "*", statement
        if statement["Effect"] != "Deny":
            continue
        if not any(fnmatchcase(request.action.lower(), action.lower()) for action in as_list(statement["Action"])):
            continue
        conditions = statement.get("Condition", {})
        if all(_condition_holds(op, key, v, request) for op, keyed in conditions.items() for key, v in keyed.items()):
            return True
    return False


def cloudformation_operations(type_name: str) -> set[str]:
    """The Secrets Manager calls CloudFormation's handlers make for a resource type (its registry schema)."""
    handlers = PROVIDER_SCHEMA_MANAGER.get_resource_schema(REGION, type_name).schema["handlers"]
    return {
        permission
        for handler in ("create", "read", "update", "delete")
        for permission in handlers[handler]["permissions"]
        if permission.startswith("secretsmanager:")
    }


CLOUDFORMATION_OPERATIONS = cloudformation_operations("AWS::SecretsManager::Secret") | cloudformation_operations(
    "AWS::SecretsManager::ResourcePolicy"
)


def test_the_cloudformation_operations_are_known():
    # The registry schema is the source; an empty or renamed list would make the checks below vacuous.
    assert {
        "secretsmanager:UpdateSecret",
        "secretsmanager:DeleteSecret",
        "secretsmanager:ReplicateSecretToRegions",
        "secretsmanager:RemoveRegionsFromReplication",
        "secretsmanager:PutResourcePolicy",
        "secretsmanager:DeleteResourcePolicy",
    } <= CLOUDFORMATION_OPERATIONS


def resource_policy(template: dict[str, Any], policy_id: str, **parameters: str) -> dict[str, Any]:
    properties = template["Resources"][policy_id]["Properties"]
    return dict(Evaluator(template, parameters).resolve(properties["ResourcePolicy"]))


# --- Checks -----------------------------------------------------------------------------------------------


def token_fence_problems(policy: dict[str, Any], admin: str | None) -> list[str]:
    problems = []
    writers = {REFRESHER} | ({admin} if admin else set())
    for action in TOKEN_VALUE_WRITES:
        for principal in (CONSUMER, ADMINISTRATOR, ROOT, DEPLOYER, ADMIN):
            if principal not in writers and not denied(policy, Request(action, principal)):
                problems.append(f"{principal} may {action}")
        for writer in writers:
            if denied(policy, Request(action, writer)):
                problems.append(f"{writer} may not {action}")
        # CloudFormation's path opens UpdateSecret only (Description, KmsKeyId), never a value write.
        if action != "secretsmanager:UpdateSecret" and not denied(policy, Request(action, DEPLOYER, CLOUDFORMATION)):
            problems.append(f"{action} is open through CloudFormation")
    problems += _cloudformation_problems(policy, expected_denied=set())
    return problems


def credentials_fence_problems(policy: dict[str, Any], admin: str | None, operator: str | None) -> list[str]:
    problems = []
    readers = {REFRESHER} | ({admin} if admin else set())
    for principal in (REFRESHER, CONSUMER, ADMINISTRATOR, ROOT, DEPLOYER, ADMIN, OPERATOR):
        for called_via in ((), CLOUDFORMATION):
            # CloudFormation included: a dynamic reference in any template would otherwise copy the secret out.
            if denied(policy, Request("secretsmanager:GetSecretValue", principal, called_via)) == (
                principal in readers
            ):
                problems.append(f"GetSecretValue by {principal} via {called_via}: wrong decision")
    writers = ({operator} | ({admin} if admin else set())) if operator else None
    for action in CREDENTIALS_VALUE_WRITES:
        for principal in (REFRESHER, CONSUMER, ADMINISTRATOR, ROOT, DEPLOYER, ADMIN, OPERATOR):
            should_deny = writers is not None and principal not in writers
            if denied(policy, Request(action, principal)) != should_deny:
                problems.append(f"{action} by {principal}: {'allowed' if should_deny else 'denied'}")
        through_cloudformation = Request(action, DEPLOYER, CLOUDFORMATION)
        if writers and action != "secretsmanager:UpdateSecret" and not denied(policy, through_cloudformation):
            problems.append(f"{action} is open through CloudFormation")
    problems += _cloudformation_problems(policy, expected_denied={"secretsmanager:GetSecretValue"})
    return problems


def _cloudformation_problems(policy: dict[str, Any], expected_denied: set[str]) -> list[str]:
    """CloudFormation (the deployer's forward access session, or a stack role's) creates, updates, reads and
    deletes the secret and its policy; nobody is locked out of managing it directly."""
    problems = []
    refused = {op for op in CLOUDFORMATION_OPERATIONS if denied(policy, Request(op, DEPLOYER, CLOUDFORMATION))}
    if refused != expected_denied:
        problems.append(f"CloudFormation is refused {sorted(refused)}, expected {sorted(expected_denied)}")
    for action in MANAGEMENT:
        if denied(policy, Request(action, ADMINISTRATOR)):
            problems.append(f"administrators are locked out of {action}")
    return problems


# --- The token secret -------------------------------------------------------------------------------------


@pytest.mark.parametrize("admin", [None, ADMIN])
def test_only_the_refresher_sets_the_token(sam_template, admin):
    parameters = {"SecretsAdminPrincipalArn": admin} if admin else {}
    policy = resource_policy(sam_template, "TokenSecretPolicy", **parameters)
    assert token_fence_problems(policy, admin) == []


def test_without_called_via_cloudformation_could_not_change_the_description_or_key(sam_template):
    # The documented fallback if aws:CalledVia were absent: only UpdateSecret (Description, KmsKeyId) fails,
    # and the stack rolls back; deletion, tags and replicas keep working.
    policy = resource_policy(sam_template, "TokenSecretPolicy")
    refused = {op for op in CLOUDFORMATION_OPERATIONS if denied(policy, Request(op, DEPLOYER))}
    assert refused == {"secretsmanager:UpdateSecret"}


def _edit_statement(policy: dict[str, Any], sid: str, **changes: Any) -> dict[str, Any]:
    broken = copy.deepcopy(policy)
    (statement,) = [s for s in broken["Statement"] if s["Sid"] == sid]
    statement.update(changes)
    return broken


@pytest.mark.parametrize(
    "breakage",
    [
        {"Action": ["secretsmanager:PutSecretValue"]},  # the other value writes left open
        {"Condition": {"ArnNotEquals": {"aws:PrincipalArn": [REFRESHER, CONSUMER]}}},
        {"Action": ["secretsmanager:*"]},  # locks administrators and CloudFormation out
    ],
    ids=["writes-left-open", "consumer-exempt", "lock-out"],
)
def test_negative_the_token_check_catches_a_weakened_or_overreaching_deny(sam_template, breakage):
    policy = resource_policy(sam_template, "TokenSecretPolicy")
    assert token_fence_problems(_edit_statement(policy, "OnlyTheRefresherSetsTheToken", **breakage), None)


def test_negative_the_token_check_catches_updates_open_to_all_or_closed_to_cloudformation(sam_template):
    policy = resource_policy(sam_template, "TokenSecretPolicy")
    sid = "OnlyTheRefresherOrCloudFormationUpdatesTheToken"
    (statement,) = [s for s in policy["Statement"] if s["Sid"] == sid]
    without_cloudformation = {"ArnNotEquals": statement["Condition"]["ArnNotEquals"]}
    assert token_fence_problems(_edit_statement(policy, sid, Condition=without_cloudformation), None)
    dropped = copy.deepcopy(policy)
    dropped["Statement"] = [s for s in dropped["Statement"] if s["Sid"] != sid]
    assert token_fence_problems(dropped, None)


# --- The credentials secret -------------------------------------------------------------------------------


@pytest.mark.parametrize("admin", [None, ADMIN])
@pytest.mark.parametrize("operator", [None, OPERATOR])
def test_only_the_refresher_reads_and_only_the_operator_stores_credentials(sam_template, admin, operator):
    parameters = {"SecretsAdminPrincipalArn": admin or "", "CredentialsOperatorPrincipalArn": operator or ""}
    policy = resource_policy(sam_template, "CredentialsSecretPolicy", **parameters)
    assert credentials_fence_problems(policy, admin, operator) == []


def test_negative_the_credentials_check_catches_an_operator_fence_that_is_missing(sam_template):
    without = resource_policy(sam_template, "CredentialsSecretPolicy")
    assert credentials_fence_problems(without, None, OPERATOR)
    with_operator = resource_policy(sam_template, "CredentialsSecretPolicy", CredentialsOperatorPrincipalArn=OPERATOR)
    readable_via_cloudformation = copy.deepcopy(with_operator)
    readable_via_cloudformation["Statement"][0]["Condition"]["ForAllValues:StringNotEquals"] = {
        "aws:CalledVia": list(CLOUDFORMATION)
    }
    assert credentials_fence_problems(readable_via_cloudformation, None, OPERATOR)


# --- What survives a stack delete ---------------------------------------------------------------------------

RETAINED = ("CredentialsSecret", "CredentialsSecretPolicy", "EncryptionKey")


def unprotected(resources: dict[str, dict[str, Any]]) -> list[str]:
    """Resources whose loss would destroy stored credentials: the secret, its read fence and the key that
    encrypts it (a key pending deletion decrypts nothing)."""
    return [
        logical_id
        for logical_id in RETAINED
        if (resources[logical_id].get("DeletionPolicy"), resources[logical_id].get("UpdateReplacePolicy"))
        != ("Retain", "Retain")
    ]


def test_stored_credentials_survive_a_stack_delete_or_replacement(cfn_resources):
    assert unprotected(cfn_resources) == []


@pytest.mark.parametrize("logical_id", RETAINED)
def test_negative_the_retention_check_sees_a_deletable_resource(cfn_resources, logical_id):
    broken = copy.deepcopy(cfn_resources)
    broken[logical_id]["DeletionPolicy"] = "Delete"
    assert unprotected(broken) == [logical_id]
