"""A consumer added to template.yaml the way the README shows ("Adding your own consumer Lambda") passes every
check a built-in consumer passes, and a wrongly declared one does not.

The snippet is added to an in-memory copy of the template, which is transformed as template.yaml is, and the
checks of checks.py run on the result. The README's own snippet (between `<!-- consumer-snippet -->` and
`<!-- /consumer-snippet -->`) gets the same treatment, so the README and these checks cannot drift apart.
"""

from __future__ import annotations

import copy
import json
import re
import textwrap
from typing import Any

import pytest

from tests.template.checks import (
    consumer_contract_problems,
    consumer_ids,
    credentials_exposure,
    iam_inventory_problems,
    log_group_problems,
    role_documents,
    unreadable_policies,
    wildcard_problems,
)
from tests.template.conftest import CONSUMER_POLICY_ID, REPO_ROOT, role_id_of, transform

# What the README gives a user to paste under Resources (its own log group included: like every function of
# the bundle, an added consumer keeps its logs LogRetentionDays days, encrypted with the bundle's key).
CONSUMER_SNIPPET = """\
MyConsumerFunction:
  Type: AWS::Serverless::Function
  Metadata:
    BuildMethod: makefile
  Properties:
    Description: My Usage Engine consumer
    CodeUri: functions/my_consumer
    Handler: app.lambda_handler
    Timeout: 15
    LoggingConfig:
      LogGroup: !Ref MyConsumerLogGroup
    Environment:
      Variables:
        POWERTOOLS_SERVICE_NAME: my-consumer
        TOKEN_SECRET_ID: !Ref TokenSecret
        USAGE_ENGINE_API_URL: !If
          - HasApiUrlOverride
          - !Ref UsageEngineApiUrl
          - !FindInMap [UsageEngineEndpoints, !Ref UsageEngineRegion, ApiUrl]
        TOKEN_REFRESHER_FUNCTION: !Sub ${TokenRefresherFunction}:live
        TOKEN_EXPIRY_SKEW_SECONDS: !Ref TokenExpirySkewSeconds
    Policies:
      - !Ref ConsumerPolicy
MyConsumerLogGroup:
  Type: AWS::Logs::LogGroup
  Properties:
    LogGroupName: !Sub /aws/lambda/${AWS::StackName}/my-consumer
    RetentionInDays: !Ref LogRetentionDays
    KmsKeyId: !If [CreateKmsKey, !GetAtt EncryptionKey.Arn, !Ref KmsKeyArn]
"""
START_MARKER = "<!-- consumer-snippet -->"
END_MARKER = "<!-- /consumer-snippet -->"


def parse_snippet(text: str) -> dict[str, Any]:
    """Resources as a user writes them under `Resources:` (short-form tags such as !Ref), as plain JSON types."""
    from cfnlint.decode import cfn_yaml  # type: ignore[import-untyped]

    resources = json.loads(json.dumps(cfn_yaml.loads(textwrap.dedent(text))))
    assert isinstance(resources, dict), "the snippet is not a mapping of resources"
    assert resources, "the snippet declares no resource"
    return resources


def with_resources(sam_template: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    template = copy.deepcopy(sam_template)
    clash = set(added) & set(template["Resources"])
    assert not clash, f"the snippet redeclares {sorted(clash)}"
    template["Resources"].update(copy.deepcopy(added))
    return template


def consumer_problems(resources: dict[str, dict[str, Any]]) -> list[str]:
    """Everything the template tests demand of a consumer, as problems."""
    return [
        *iam_inventory_problems(resources),
        *consumer_contract_problems(resources),
        *credentials_exposure(resources),
        *wildcard_problems(resources),
        *log_group_problems(resources),
    ]


def added_consumer(sam_template: dict[str, Any], snippet: dict[str, Any]) -> tuple[str, dict[str, dict[str, Any]]]:
    """The added function's logical ID and the transformed resources of the template with the snippet."""
    resources = transform(with_resources(sam_template, snippet))["Resources"]
    (function_id,) = [f for f in consumer_ids(resources) if f in snippet]
    return function_id, resources


def assert_accepted(sam_template: dict[str, Any], snippet: dict[str, Any]) -> None:
    function_id, resources = added_consumer(sam_template, snippet)
    assert consumer_problems(resources) == []
    # Its permissions are ConsumerPolicy's, plus SAM's execution policies (logs, X-Ray writes) and nothing else.
    role_id = role_id_of(resources, function_id)
    assert [d["Statement"] for d in role_documents(resources, role_id)] == [
        resources[CONSUMER_POLICY_ID]["Properties"]["PolicyDocument"]["Statement"]
    ]
    assert len(unreadable_policies(resources, resources[role_id])) == 0


def test_the_template_as_written_passes_the_consumer_checks(cfn_resources: dict[str, dict[str, Any]]) -> None:
    assert consumer_problems(cfn_resources) == []


def test_a_consumer_declared_as_the_readme_shows_is_accepted(sam_template: dict[str, Any]) -> None:
    assert_accepted(sam_template, parse_snippet(CONSUMER_SNIPPET))


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("USAGE_ENGINE_API_URL", {"Ref": "UsageEngineApiUrl"}, "USAGE_ENGINE_API_URL"),
        ("TOKEN_REFRESHER_FUNCTION", {"Ref": "TokenRefresherFunction"}, "TOKEN_REFRESHER_FUNCTION"),
        ("TOKEN_SECRET_ID", {"Ref": "CredentialsSecret"}, "credentials"),
    ],
    ids=["api-url-parameter-only", "refresher-without-alias", "credentials-secret"],
)
def test_negative_a_consumer_with_a_wrong_variable_is_rejected(
    sam_template: dict[str, Any], variable: str, value: Any, reason: str
) -> None:
    snippet = parse_snippet(CONSUMER_SNIPPET)
    snippet["MyConsumerFunction"]["Properties"]["Environment"]["Variables"][variable] = value
    _, resources = added_consumer(sam_template, snippet)
    problems = consumer_problems(resources)
    assert any(reason in problem for problem in problems), problems


@pytest.mark.parametrize(
    "policies",
    [
        # The same grants, inline: the consumer no longer follows ConsumerPolicy's changes.
        [
            {
                "Statement": [
                    {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": {"Ref": "TokenSecret"}},
                    {
                        "Effect": "Allow",
                        "Action": "lambda:InvokeFunction",
                        "Resource": {"Fn::Sub": "${TokenRefresherFunction.Arn}:live"},
                    },
                ]
            }
        ],
        [],
        ["arn:aws:iam::aws:policy/SecretsManagerReadWrite"],
    ],
    ids=["inline-statements", "none", "aws-managed-policy"],
)
def test_negative_a_consumer_without_the_consumer_policy_is_rejected(
    sam_template: dict[str, Any], policies: list[Any]
) -> None:
    snippet = parse_snippet(CONSUMER_SNIPPET)
    snippet["MyConsumerFunction"]["Properties"]["Policies"] = policies
    _, resources = added_consumer(sam_template, snippet)
    assert any(CONSUMER_POLICY_ID in problem for problem in consumer_problems(resources))


def test_negative_a_consumer_without_a_log_group_of_its_own_is_rejected(sam_template: dict[str, Any]) -> None:
    snippet = parse_snippet(CONSUMER_SNIPPET)
    del snippet["MyConsumerLogGroup"]
    del snippet["MyConsumerFunction"]["Properties"]["LoggingConfig"]
    _, resources = added_consumer(sam_template, snippet)
    assert any("MyConsumerFunction" in problem for problem in log_group_problems(resources))


def marked_snippet(text: str) -> str | None:
    """The YAML between the consumer-snippet markers of a Markdown text (inside a ```yaml fence, indented or
    not, as in a list item), or None without the markers."""
    found = re.search(re.escape(START_MARKER) + r"(.*?)" + re.escape(END_MARKER), text, re.DOTALL)
    if found is None:
        return None
    lines = [line for line in found.group(1).splitlines() if not line.strip().startswith("```")]
    return textwrap.dedent("\n".join(lines))


def test_the_marked_snippet_is_read_from_a_list_item() -> None:
    indented = textwrap.indent(f"```yaml\n{CONSUMER_SNIPPET}```\n", "   ")
    text = f"1. Declare it:\n\n{START_MARKER}\n{indented}{END_MARKER}\n\n2. Next step.\n"
    snippet = marked_snippet(text)
    assert snippet is not None
    assert parse_snippet(snippet) == parse_snippet(CONSUMER_SNIPPET)
    assert marked_snippet("no markers") is None


def test_the_readme_snippet_is_accepted(sam_template: dict[str, Any]) -> None:
    snippet = marked_snippet((REPO_ROOT / "README.md").read_text())
    if snippet is None:
        pytest.skip(f"README.md has no {START_MARKER} ... {END_MARKER} section to check")
    assert_accepted(sam_template, parse_snippet(snippet))
