"""Parameters, mappings, conditions and rules, resolved for concrete parameter sets (conftest.Evaluator): what
CloudFormation would deploy for a US tenant, an override, an existing secret or key, replica regions, and which
parameter values it refuses."""

from __future__ import annotations

import copy
import re
from typing import Any

import botocore.session
import pytest

from tests.template.conftest import REGION, REPO_ROOT, Evaluator

EXISTING_SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:usage-engine/creds-AbC123"
EXISTING_KEY = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ADMIN = "arn:aws:iam::123456789012:role/break-glass"
OPERATOR = "arn:aws:iam::123456789012:role/usage-engine-operator"


def accepted(template: dict[str, Any], name: str, value: str) -> bool:
    """Whether the parameter's AllowedPattern admits value; for a CommaDelimitedList CloudFormation matches
    each member (trimmed) instead of the whole value."""
    parameter = template["Parameters"][name]
    pattern = re.compile(parameter["AllowedPattern"])
    if parameter["Type"] == "CommaDelimitedList":
        return all(pattern.match(member.strip()) for member in value.split(","))
    return pattern.match(value) is not None


def resolved(template: dict[str, Any], parameters: dict[str, str], *path: str) -> Any:
    node: Any = template
    for key in path:
        node = node[key]
    return Evaluator(template, parameters).resolve(node)


def refresher_env(template: dict[str, Any], **parameters: str) -> dict[str, str]:
    env = resolved(template, parameters, "Resources", "TokenRefresherFunction", "Properties", "Environment")
    return dict(env["Variables"])


def consumer_api_url(template: dict[str, Any], **parameters: str) -> str:
    path = ("Resources", "MeterQueryFunction", "Properties", "Environment", "Variables", "USAGE_ENGINE_API_URL")
    return str(resolved(template, parameters, *path))


def test_every_parameter_is_in_a_console_group(sam_template):
    groups = sam_template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    grouped = [name for group in groups for name in group["Parameters"]]
    assert sorted(grouped) == sorted(sam_template["Parameters"])


@pytest.mark.parametrize(
    ("region", "host"),
    [("EU", "api.digitalroute.io"), ("US", "api.us.digitalroute.io")],
)
def test_region_selects_the_endpoints(sam_template, region, host):
    env = refresher_env(sam_template, UsageEngineRegion=region)
    assert env["USAGE_ENGINE_TOKEN_URL"] == f"https://{host}/authentication/v1/oauth/token"
    assert env["USAGE_ENGINE_AUDIENCE"] == f"https://{host}/"
    assert consumer_api_url(sam_template, UsageEngineRegion=region) == f"https://{host}"


def test_defaults_are_the_eu_endpoints(sam_template):
    env = refresher_env(sam_template)
    assert env["USAGE_ENGINE_TOKEN_URL"] == "https://api.digitalroute.io/authentication/v1/oauth/token"
    assert consumer_api_url(sam_template) == "https://api.digitalroute.io"


def test_explicit_endpoints_override_the_region(sam_template):
    overrides = {
        "UsageEngineRegion": "US",
        "UsageEngineTokenUrl": "https://idp.example.test/oauth/token",
        "UsageEngineAudience": "https://api.example.test/",
    }
    env = refresher_env(sam_template, **overrides)
    assert env["USAGE_ENGINE_TOKEN_URL"] == "https://idp.example.test/oauth/token"
    assert env["USAGE_ENGINE_AUDIENCE"] == "https://api.example.test/"
    # Only what is overridden changes.
    assert consumer_api_url(sam_template, **overrides) == "https://api.us.digitalroute.io"
    assert consumer_api_url(sam_template, UsageEngineApiUrl="https://api.example.test") == "https://api.example.test"


def replica_regions(template: dict[str, Any], value: str) -> Any:
    secret = resolved(template, {"TokenSecretReplicaRegions": value}, "Resources", "TokenSecret", "Properties")
    return secret.get("ReplicaRegions")


@pytest.mark.parametrize(
    ("value", "regions"),
    [
        ("", None),
        ("us-east-1", ["us-east-1"]),
        ("us-east-1,eu-central-1", ["us-east-1", "eu-central-1"]),
        ("us-east-1, eu-central-1", ["us-east-1", "eu-central-1"]),  # CloudFormation trims list members
        (",us-east-1,eu-central-1", ["us-east-1", "eu-central-1"]),  # an empty member is skipped
        ("us-east-1,eu-central-1,ap-southeast-2", ["us-east-1", "eu-central-1", "ap-southeast-2"]),
    ],
)
def test_token_secret_replicas(sam_template, value, regions):
    assert accepted(sam_template, "TokenSecretReplicaRegions", value)
    assert Evaluator(sam_template, {"TokenSecretReplicaRegions": value}).failed_rules() == []
    if regions is None:
        assert replica_regions(sam_template, value) is None
    else:
        # Each replica is encrypted with its own region's AWS managed key (a KMS key is regional).
        assert replica_regions(sam_template, value) == [
            {"Region": region, "KmsKeyId": "alias/aws/secretsmanager"} for region in regions
        ]


def test_a_fourth_replica_region_fails_the_deployment_instead_of_being_ignored(sam_template):
    value = "us-east-1,eu-central-1,ap-southeast-2,eu-north-1"
    assert accepted(sam_template, "TokenSecretReplicaRegions", value)  # the pattern checks members only
    *replicas, guard = replica_regions(sam_template, value)
    assert [replica["Region"] for replica in replicas] == ["us-east-1", "eu-central-1", "ap-southeast-2"]
    # The fourth entry is one that Secrets Manager's API refuses, so the stack operation fails.
    api_pattern = botocore.session.get_session().get_service_model("secretsmanager")
    region_pattern = api_pattern.shape_for("ReplicaRegionType").members["Region"].metadata["pattern"]
    assert set(guard) == {"Region"}
    assert not re.match(region_pattern, guard["Region"])
    assert all(re.match(region_pattern, replica["Region"]) for replica in replicas)


@pytest.mark.parametrize(
    ("region", "value"),
    [(REGION, REGION), (REGION, f"us-east-1,{REGION}"), (REGION, f"us-east-1, {REGION}"), ("us-east-1", "us-east-1")],
)
def test_the_stacks_own_region_is_refused_as_a_replica(sam_template, region, value):
    evaluator = Evaluator(sam_template, {"TokenSecretReplicaRegions": value}, region=region)
    (refusal,) = evaluator.failed_rules()
    assert "own region" in refusal
    # ... while the same list is fine for a stack in another region.
    other = "ap-northeast-1"
    assert Evaluator(sam_template, {"TokenSecretReplicaRegions": value}, region=other).failed_rules() == []


def test_negative_without_the_rule_the_own_region_would_be_accepted(sam_template):
    broken = copy.deepcopy(sam_template)
    del broken["Rules"]
    assert Evaluator(broken, {"TokenSecretReplicaRegions": REGION}).failed_rules() == []


@pytest.mark.parametrize("value", ["US-EAST-1", "us_east_1", "us-east", "us-east-1;eu-central-1", "us-east-1,eu"])
def test_replica_regions_are_validated(sam_template, value):
    assert not accepted(sam_template, "TokenSecretReplicaRegions", value)


@pytest.mark.parametrize(("value", "reserved"), [("1", "1"), ("3", "3"), ("0", None)])
def test_refresher_reserved_concurrency(sam_template, value, reserved):
    properties = resolved(
        sam_template, {"RefresherReservedConcurrency": value}, "Resources", "TokenRefresherFunction", "Properties"
    )
    # 0 is no reservation at all, never ReservedConcurrentExecutions 0 (which would stop the function).
    assert properties.get("ReservedConcurrentExecutions") == reserved


def test_an_existing_credentials_secret_replaces_the_stacks_one(sam_template):
    parameters = {"ExistingCredentialsSecretArn": EXISTING_SECRET}
    evaluator = Evaluator(sam_template, parameters)
    assert not evaluator.condition("CreateCredentialsSecret")
    assert refresher_env(sam_template, **parameters)["CREDENTIALS_SECRET_ID"] == EXISTING_SECRET
    policy = resolved(sam_template, parameters, "Resources", "TokenRefresherRole", "Properties", "Policies")
    by_sid = {s["Sid"]: s for s in policy[0]["PolicyDocument"]["Statement"]}
    assert by_sid["ReadClientCredentials"]["Resource"] == EXISTING_SECRET
    context = by_sid["DecryptBothSecrets"]["Condition"]["StringEquals"]["kms:EncryptionContext:SecretARN"]
    assert context == [EXISTING_SECRET, "<Ref TokenSecret>"]
    assert resolved(sam_template, parameters, "Outputs", "CredentialsSecretArn", "Value") == EXISTING_SECRET
    pattern = re.compile(sam_template["Parameters"]["ExistingCredentialsSecretArn"]["AllowedPattern"])
    assert pattern.match(EXISTING_SECRET)
    assert not pattern.match(EXISTING_SECRET.rsplit("-", 1)[0])  # a partial ARN would not match the context


def test_an_existing_key_replaces_the_stacks_key_everywhere(sam_template):
    parameters = {"KmsKeyArn": EXISTING_KEY}
    evaluator = Evaluator(sam_template, parameters)
    assert not evaluator.condition("CreateKmsKey")
    key_users = 0
    for logical_id, resource in sam_template["Resources"].items():
        properties = evaluator.resolve(resource.get("Properties", {}))
        for name in ("KmsKeyId", "KmsMasterKeyId"):
            if name in properties:
                assert properties[name] == EXISTING_KEY, logical_id
                key_users += 1
    log_groups = [r for r in sam_template["Resources"].values() if r["Type"] == "AWS::Logs::LogGroup"]
    assert key_users == 2 + 5 + 1 + len(log_groups)  # secrets, queues, topic, every log group
    assert len(log_groups) >= 4  # the three functions' and the HTTP API's access log
    pattern = re.compile(sam_template["Parameters"]["KmsKeyArn"]["AllowedPattern"])
    assert pattern.match(EXISTING_KEY)
    assert not pattern.match("arn:aws:kms:eu-west-1:123456789012:alias/mine")


def test_the_break_glass_principal_is_exempt_only_when_set(sam_template):
    path = ("Resources", "CredentialsSecretPolicy", "Properties", "ResourcePolicy", "Statement")
    without = resolved(sam_template, {}, *path)[0]["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]
    assert without == ["<TokenRefresherRole.Arn>"]
    with_admin = resolved(sam_template, {"SecretsAdminPrincipalArn": ADMIN}, *path)
    assert with_admin[0]["Condition"]["ArnNotEquals"]["aws:PrincipalArn"] == ["<TokenRefresherRole.Arn>", ADMIN]


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("AlarmEmail", ["", "oncall@example.com"], ["oncall", "a b@example.com"]),
        ("SecretsAdminPrincipalArn", ["", ADMIN], ["arn:aws:iam::123456789012:root", "break-glass"]),
        ("CredentialsOperatorPrincipalArn", ["", OPERATOR], ["arn:aws:iam::123456789012:root", "operator"]),
        ("RefreshScheduleExpression", ["rate(5 minutes)", "cron(0/5 * * * ? *)"], ["rate(10 minutes)", "5m"]),
    ],
)
def test_parameter_validation(sam_template, name, good, bad):
    pattern = re.compile(sam_template["Parameters"][name]["AllowedPattern"])
    for value in good:
        assert pattern.match(value), value
        assert accepted(sam_template, name, value), value
    for value in bad:
        assert not pattern.match(value), value


def test_alarm_subscription_only_with_an_email(sam_template):
    assert not Evaluator(sam_template, {}).condition("HasAlarmEmail")
    assert Evaluator(sam_template, {"AlarmEmail": "oncall@example.com"}).condition("HasAlarmEmail")


def test_the_skew_parameter_cannot_exceed_any_refresh_margin(sam_template: dict[str, Any]) -> None:
    # A consumer that treats a token as expired must always find the refresher willing to replace it.
    from usage_engine.settings import MAX_TOKEN_EXPIRY_SKEW_SECONDS, MIN_REFRESH_MARGIN_SECONDS

    parameters = sam_template["Parameters"]
    assert int(parameters["TokenExpirySkewSeconds"]["MaxValue"]) == MAX_TOKEN_EXPIRY_SKEW_SECONDS
    assert int(parameters["RefreshMarginSeconds"]["MinValue"]) >= MIN_REFRESH_MARGIN_SECONDS
    assert int(parameters["TokenExpirySkewSeconds"]["MaxValue"]) <= int(parameters["RefreshMarginSeconds"]["MinValue"])


def operations_guide_parameters() -> dict[str, str]:
    """The Parameters table of docs/operations.md: parameter name -> its Default column."""
    text = (REPO_ROOT / "docs" / "operations.md").read_text()
    section = text.split("\n## Parameters\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", section, re.MULTILINE)
    return {name: default.strip() for name, default in rows}


def test_the_operations_guide_lists_every_parameter_with_its_default(sam_template):
    documented = operations_guide_parameters()
    assert sorted(documented) == sorted(sam_template["Parameters"])
    for name, parameter in sam_template["Parameters"].items():
        default = str(parameter.get("Default", ""))
        assert documented[name] == (f"`{default}`" if default else "empty"), name
