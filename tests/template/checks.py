"""Checks of the transformed template that return problems instead of asserting, so that the tests run them on
template.yaml, on a copy with a consumer added the way the README shows (test_added_consumer.py), and on broken
copies (the negative tests).

A consumer is every function but the token refresher: the two this template declares, and any a user adds to
it. The built-in ones run with roles declared here; an added one may let SAM generate its role, which then
carries SAM's two execution policies (logs and X-Ray writes, both AWS managed) besides ConsumerPolicy.
"""

from __future__ import annotations

import re
from typing import Any

from tests.template.conftest import (
    API_URL,
    CONSUMER_POLICY_ID,
    CREDENTIALS_SECRET_ID,
    DEPLOYMENT_ROLE_ID,
    FUNCTION_IDS,
    KEY_ARN,
    REFRESHER_ALIAS_NAME,
    REFRESHER_ID,
    TOKEN_SECRET_ID,
    as_list,
    policy_documents,
    references,
    resources_of_type,
    role_id_of,
    statements,
)

IAM_TYPES = ("AWS::IAM::Role", "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::IAM::RolePolicy")
SCHEDULE_ROLE_ID = "RefreshScheduleRole"
API_ACCESS_LOG_GROUP_ID = "MeterQueryApiAccessLogGroup"

# What SAM attaches to a role it generates for a function with Tracing: Active. Both are AWS managed and grant
# logs and X-Ray writes only; any other managed policy a test cannot read is a problem.
SAM_EXECUTION_POLICIES = re.compile(
    r"^arn:aws[a-z-]*:iam::aws:policy/(service-role/AWSLambdaBasicExecutionRole|AWSXrayWriteOnlyAccess)$"
)

# The only actions that may name Resource "*": X-Ray has no resource-level permissions for them.
ACTIONS_WITHOUT_RESOURCE_LEVEL_PERMISSIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}

# Every consumer's share of the contract (docs/contracts.md): the default connection's four variables.
CONSUMER_ENVIRONMENT = {
    "TOKEN_SECRET_ID": {"Ref": TOKEN_SECRET_ID},
    "USAGE_ENGINE_API_URL": API_URL,
    "TOKEN_REFRESHER_FUNCTION": REFRESHER_ALIAS_NAME,
    "TOKEN_EXPIRY_SKEW_SECONDS": {"Ref": "TokenExpirySkewSeconds"},
}


def function_ids(resources: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(resources_of_type(resources, "AWS::Lambda::Function"))


def consumer_ids(resources: dict[str, dict[str, Any]]) -> list[str]:
    return [function_id for function_id in function_ids(resources) if function_id != REFRESHER_ID]


def strings(node: Any) -> list[str]:
    """Every string in node, inside intrinsic functions too (an Fn::Sub ARN can hold a wildcard)."""
    if isinstance(node, dict):
        return [text for value in node.values() for text in strings(value)]
    if isinstance(node, list):
        return [text for item in node for text in strings(item)]
    return [node] if isinstance(node, str) else []


def managed_policy_arns(role: dict[str, Any]) -> list[Any]:
    return list(role["Properties"].get("ManagedPolicyArns", []))


def template_policy_ids(resources: dict[str, dict[str, Any]], role: dict[str, Any]) -> list[str]:
    """The managed policies of this template that a role attaches (by Ref, so the tests can read them)."""
    return [
        arn["Ref"]
        for arn in managed_policy_arns(role)
        if isinstance(arn, dict)
        and set(arn) == {"Ref"}
        and resources.get(arn["Ref"], {}).get("Type") == "AWS::IAM::ManagedPolicy"
    ]


def unreadable_policies(resources: dict[str, dict[str, Any]], role: dict[str, Any]) -> list[Any]:
    """Managed policies a role attaches that are not in this template, SAM's two execution policies excepted."""
    own = set(template_policy_ids(resources, role))
    return [
        arn
        for arn in managed_policy_arns(role)
        if not (isinstance(arn, dict) and arn.get("Ref") in own)
        and not (isinstance(arn, str) and SAM_EXECUTION_POLICIES.match(arn))
    ]


def role_documents(resources: dict[str, dict[str, Any]], role_id: str) -> list[dict[str, Any]]:
    """Every permission policy document a role has: inline, this template's managed policies it attaches, and
    this template's policies that name it in Roles."""
    role = resources[role_id]
    documents = list(policy_documents(role))
    documents += [
        d for policy_id in template_policy_ids(resources, role) for d in policy_documents(resources[policy_id])
    ]
    for policy in resources_of_type(resources, "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy").values():
        if any(references(r, role_id) for r in policy["Properties"].get("Roles", [])):
            documents += list(policy_documents(policy))
    return documents


# --- IAM ------------------------------------------------------------------------------------------------


def iam_inventory_problems(resources: dict[str, dict[str, Any]]) -> list[str]:
    """Every IAM resource is accounted for, and every function has a role of its own. The built-in functions'
    roles are declared here with no managed policy but this template's (a generated role would carry AWS
    managed ones on "*"); an added consumer's role (generated by SAM or declared) may carry SAM's two execution
    policies besides. Beyond the functions' roles: the schedule's and CodeDeploy's roles, and ConsumerPolicy."""
    problems = []
    functions = function_ids(resources)
    missing = sorted(set(FUNCTION_IDS) - set(functions))
    if missing:
        problems.append(f"built-in functions missing: {missing}")
    roles: dict[str, str] = {}
    for function_id in functions:
        role = resources[function_id]["Properties"].get("Role")
        if not (isinstance(role, dict) and set(role) == {"Fn::GetAtt"} and role["Fn::GetAtt"][1] == "Arn"):
            problems.append(f"{function_id}: role not from this template: {role}")
            continue
        role_id = role_id_of(resources, function_id)
        if role_id in roles.values():
            problems.append(f"{function_id}: shares its role {role_id}")
        roles[function_id] = role_id
        if resources.get(role_id, {}).get("Type") != "AWS::IAM::Role":
            problems.append(f"{function_id}: {role_id} is not a role of this template")
            continue
        unreadable = unreadable_policies(resources, resources[role_id])
        if function_id in FUNCTION_IDS and managed_policy_arns(resources[role_id]) != [
            {"Ref": p} for p in template_policy_ids(resources, resources[role_id])
        ]:
            problems.append(f"{function_id}: {role_id} attaches managed policies from outside this template")
        elif unreadable:
            problems.append(f"{function_id}: {role_id} attaches managed policies no test can read: {unreadable}")
    expected = set(roles.values()) | {SCHEDULE_ROLE_ID, DEPLOYMENT_ROLE_ID, CONSUMER_POLICY_ID}
    actual = set(resources_of_type(resources, *IAM_TYPES))
    if actual != expected:
        problems.append(
            f"IAM resources not accounted for: {sorted(actual - expected)}, missing: {sorted(expected - actual)}"
        )
    return problems


def credentials_exposure(resources: dict[str, dict[str, Any]]) -> list[str]:
    """Ways a consumer role could read the credentials secret: a reference to it, a secretsmanager action on a
    wildcard resource, a wildcard secretsmanager action, or a managed policy no test can read."""
    problems = []
    for function_id in consumer_ids(resources):
        role_id = role_id_of(resources, function_id)
        unreadable = unreadable_policies(resources, resources[role_id])
        if unreadable:
            problems.append(f"{role_id}: managed policies {unreadable}")
        for document in role_documents(resources, role_id):
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
                if secret_actions and any("*" in text for text in strings(statement.get("Resource", []))):
                    problems.append(f"{role_id}: secretsmanager on a wildcard resource: {statement}")
    return problems


def wildcard_problems(resources: dict[str, dict[str, Any]]) -> list[str]:
    """Wildcards in any action or resource of the template's IAM policies (X-Ray's two writes excepted), and
    NotAction/NotResource statements."""
    problems = []
    for logical_id, resource in resources_of_type(resources, *IAM_TYPES).items():
        for document in policy_documents(resource):
            for statement in statements(document):
                if "NotAction" in statement or "NotResource" in statement:
                    problems.append(f"{logical_id}: NotAction/NotResource")
                actions = strings(statement.get("Action", []))
                problems += [f"{logical_id}: Action {value!r}" for value in actions if "*" in value]
                for value in strings(statement.get("Resource", [])):
                    if value == "*" and set(actions) <= ACTIONS_WITHOUT_RESOURCE_LEVEL_PERMISSIONS:
                        continue
                    if "*" in value:
                        problems.append(f"{logical_id}: Resource {value!r} for {actions}")
    return problems


# --- Consumers ------------------------------------------------------------------------------------------


def consumer_contract_problems(resources: dict[str, dict[str, Any]]) -> list[str]:
    """Every consumer gets the default connection's variables exactly as the built-in ones do (the token secret,
    the region-aware API URL, the refresher's live alias, the skew parameter), a service name of its own, the
    layer, and ConsumerPolicy on its role; and nothing of the client credentials."""
    problems = []
    services: dict[str, str] = {}
    for function_id in consumer_ids(resources):
        properties = resources[function_id]["Properties"]
        env = properties.get("Environment", {}).get("Variables", {})
        for name, expected in CONSUMER_ENVIRONMENT.items():
            if env.get(name) != expected:
                problems.append(f"{function_id}: {name} is {env.get(name)!r}, expected {expected!r}")
        service = env.get("POWERTOOLS_SERVICE_NAME")
        if not isinstance(service, str) or not service:
            problems.append(f"{function_id}: no POWERTOOLS_SERVICE_NAME (the service dimension of its metrics)")
        elif service in services or service == "token-refresher":
            problems.append(f"{function_id}: POWERTOOLS_SERVICE_NAME {service!r} is another function's")
        else:
            services[service] = function_id
        if "CREDENTIALS_SECRET_ID" in env or references(env, CREDENTIALS_SECRET_ID):
            problems.append(f"{function_id}: is given the credentials secret")
        layers = properties.get("Layers", [])
        if not (layers and str(layers[0].get("Ref", "")).startswith("UsageEngineLayer")):
            problems.append(f"{function_id}: does not have the usage_engine layer first: {layers}")
        role_id = role_id_of(resources, function_id)
        if CONSUMER_POLICY_ID not in template_policy_ids(resources, resources.get(role_id, {"Properties": {}})):
            problems.append(f"{function_id}: its role {role_id} does not attach {CONSUMER_POLICY_ID}")
    return problems


# --- Logs -----------------------------------------------------------------------------------------------


def log_group_problems(resources: dict[str, dict[str, Any]]) -> list[str]:
    """Every function logs to a log group of its own (LoggingConfig), kept RetentionInDays days and encrypted
    with the bundle's key, under the names the key policy lets CloudWatch Logs use; and no log group belongs to
    nobody (the HTTP API's access log is the one group that is not a function's)."""
    problems = []
    groups = resources_of_type(resources, "AWS::Logs::LogGroup")
    owned = {API_ACCESS_LOG_GROUP_ID}
    for function_id in function_ids(resources):
        configured = resources[function_id]["Properties"].get("LoggingConfig", {}).get("LogGroup")
        mine = [group_id for group_id in groups if configured == {"Ref": group_id}]
        if len(mine) != 1:
            problems.append(f"{function_id}: logs to {configured!r}, not to a log group of its own")
            continue
        if mine[0] in owned:
            problems.append(f"{function_id}: shares its log group {mine[0]}")
        owned.add(mine[0])
    for group_id, group in groups.items():
        properties = group["Properties"]
        if group_id not in owned:
            problems.append(f"{group_id}: no function logs to it")
        if properties.get("RetentionInDays") != {"Ref": "LogRetentionDays"}:
            problems.append(f"{group_id}: retention {properties.get('RetentionInDays')!r}")
        if properties.get("KmsKeyId") != KEY_ARN:
            problems.append(f"{group_id}: not encrypted with the bundle's key")
        name = properties.get("LogGroupName", {})
        text = name.get("Fn::Sub") if isinstance(name, dict) else None
        if not (isinstance(text, str) and re.match(r"^/aws/(lambda|apigateway)/\$\{AWS::StackName\}/[a-z-]+$", text)):
            problems.append(f"{group_id}: name {name!r} is outside what the key policy admits")
    return problems
