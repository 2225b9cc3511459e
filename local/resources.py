"""The stack's AWS resources recreated in moto: what template.yaml deploys, minus the functions' roles.

Used by the demo and the integration tests so both exercise the same wiring: two secrets, the custom
event bus with its rule to the meter-events queue, that queue's dead-letter queue with a redrive policy, and
the meter state table (TTL on expiresAt) that keeps each meter's events in order.

With an API URL (the emulator's) it also publishes what the bundle publishes for consumers in other stacks:
the SSM parameters /usage-engine/<stack name>/<suffix> (the platform contract, CONTRACT_PARAMETERS) with the
local resources' ARNs and URLs, read from template.yaml's AWS::SSM::Parameter resources, and the consumer
managed policy (in moto's IAM) and KMS key whose ARNs two of them hold.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import boto3

from local.stack import METER_STATE_TABLE, REFRESHER_FUNCTION, cached_template
from local.template import REGION, Evaluator

CREDENTIALS_SECRET = "usage-engine/credentials"
TOKEN_SECRET = "usage-engine/token"
EVENT_BUS = "usage-engine-events"
METER_EVENTS_RULE = "meter-events"
DETAIL_TYPES = ["Create Meter", "Update Meter", "Delete Meter"]
MAX_RECEIVE_COUNT = 5


# The local bundle stack's name: samconfig.toml's default stack, so the example consumer's defaults
# (/usage-engine/usage-engine-token-bundle/...) resolve here as they do against a default deployment.
BUNDLE_STACK_NAME = "usage-engine-token-bundle"
# moto's default account, and local.template's AWS::AccountId.
ACCOUNT_ID = "123456789012"
PARAMETER_PREFIX = "/usage-engine/"

# The platform contract: the String parameters the bundle publishes under /usage-engine/<StackName>/, for
# consumers in other stacks. Suffix -> what it holds.
CONTRACT_PARAMETERS: dict[str, str] = {
    "layer-version-arn": "ARN of the usage_engine layer version",
    "token-secret-arn": "ARN of the token secret",
    "encryption-key-arn": "ARN of the KMS key that encrypts the token secret",
    "refresher-function-arn": "ARN of the token refresher function",
    "api-url": "the Usage Engine API base URL the consumers call",
    "token-expiry-skew-seconds": "the TokenExpirySkewSeconds parameter",
    "consumer-policy-arn": "ARN of the customer-managed IAM policy a consumer attaches",
}


@dataclass(frozen=True)
class PublishedParameters:
    """The bundle's SSM parameters as published locally: suffix -> value."""

    stack_name: str
    values: Mapping[str, str]

    def name(self, suffix: str) -> str:
        return parameter_name(suffix, self.stack_name)

    @property
    def by_name(self) -> dict[str, str]:
        return {self.name(suffix): value for suffix, value in self.values.items()}


@dataclass(frozen=True)
class LocalResources:
    credentials_secret: str
    token_secret: str
    event_bus: str
    queue_url: str
    queue_arn: str
    dead_letter_queue_url: str
    meter_state_table: str = ""
    # Only when create_resources was given the API URL consumers call.
    parameters: PublishedParameters | None = None


def create_resources(
    *, with_events: bool = True, api_url: str | None = None, stack_name: str = BUNDLE_STACK_NAME
) -> LocalResources:
    """Create the resources in whatever AWS boto3 points at (moto, via AWS_ENDPOINT_URL); with `api_url`, also
    the SSM parameters the bundle publishes for consumers (publish_bundle_parameters)."""
    secrets = boto3.client("secretsmanager")
    secrets.create_secret(Name=CREDENTIALS_SECRET, Description="Usage Engine client credentials")
    secrets.create_secret(Name=TOKEN_SECRET, Description="Usage Engine access token")
    if not with_events:
        published = None if api_url is None else publish_bundle_parameters(api_url=api_url, stack_name=stack_name)
        return LocalResources(CREDENTIALS_SECRET, TOKEN_SECRET, "", "", "", "", parameters=published)
    sqs = boto3.client("sqs")
    dlq_url = sqs.create_queue(QueueName="meter-events-dlq")["QueueUrl"]
    dlq_arn = _arn(sqs, dlq_url)
    queue_url = sqs.create_queue(
        QueueName="meter-events",
        Attributes={
            "VisibilityTimeout": "180",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVE_COUNT}),
        },
    )["QueueUrl"]
    queue_arn = _arn(sqs, queue_url)
    events = boto3.client("events")
    events.create_event_bus(Name=EVENT_BUS)
    events.put_rule(
        Name=METER_EVENTS_RULE, EventBusName=EVENT_BUS, EventPattern=json.dumps({"detail-type": DETAIL_TYPES})
    )
    events.put_targets(Rule=METER_EVENTS_RULE, EventBusName=EVENT_BUS, Targets=[{"Id": "queue", "Arn": queue_arn}])
    create_meter_state_table()
    published = None if api_url is None else publish_bundle_parameters(api_url=api_url, stack_name=stack_name)
    return LocalResources(
        CREDENTIALS_SECRET, TOKEN_SECRET, EVENT_BUS, queue_url, queue_arn, dlq_url, METER_STATE_TABLE, published
    )


def create_meter_state_table(name: str = METER_STATE_TABLE) -> str:
    """The table as template.yaml's MeterStateTable: key pk, on demand, TTL on expiresAt."""
    dynamodb = boto3.client("dynamodb")
    dynamodb.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiresAt"}
    )
    return name


def parameter_name(suffix: str, stack_name: str = BUNDLE_STACK_NAME) -> str:
    return f"{PARAMETER_PREFIX}{stack_name}/{suffix}"


def local_layer_arn(stack_name: str = BUNDLE_STACK_NAME) -> str:
    """The layer version's ARN here: the local runs put the layer's source folder on the path in its place."""
    return f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:layer:{stack_name}-usage-engine:1"


def local_refresher_arn() -> str:
    """The refresher's unqualified ARN (the local Lambda endpoint serves any qualifier as $LATEST)."""
    return f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{REFRESHER_FUNCTION}"


def _alias_of(template: dict[str, Any], function_id: str) -> str:
    """The alias SAM publishes for a function (AutoPublishAlias), which `!Ref <function>.Alias` names."""
    return str(template["Resources"][function_id]["Properties"].get("AutoPublishAlias", "live"))


def publish_bundle_parameters(
    *, api_url: str, stack_name: str = BUNDLE_STACK_NAME, template: dict[str, Any] | None = None
) -> PublishedParameters:
    """Publish the bundle's SSM parameters as its template does, with the local resources' values.

    Needs the token secret (create_resources). Creates the KMS key and the consumer managed policy whose ARNs
    two parameters hold (the policy's document evaluated from the template's ConsumerPolicy). The parameters
    are template.yaml's AWS::SSM::Parameter resources under /usage-engine/${AWS::StackName}/ (tests/examples
    keeps them equal to CONTRACT_PARAMETERS).
    """
    template = cached_template() if template is None else template
    token_secret_arn = str(boto3.client("secretsmanager").describe_secret(SecretId=TOKEN_SECRET)["ARN"])
    key = boto3.client("kms").create_key(Description="usage-engine local bundle key")["KeyMetadata"]
    refs = {
        "UsageEngineLayer": local_layer_arn(stack_name),
        # Ref of a secret is its ARN; of a key, its id; of a function, its name; of SAM's alias, the alias's ARN.
        "TokenSecret": token_secret_arn,
        "EncryptionKey": str(key["KeyId"]),
        "TokenRefresherFunction": REFRESHER_FUNCTION,
        "TokenRefresherFunction.Alias": f"{local_refresher_arn()}:{_alias_of(template, 'TokenRefresherFunction')}",
    }
    attributes = {"EncryptionKey.Arn": str(key["Arn"]), "TokenRefresherFunction.Arn": local_refresher_arn()}
    # The template's URL override is how a deployment points at another Usage Engine; here, the emulator.
    parameters = {"UsageEngineApiUrl": api_url}
    evaluator = _LocalEvaluator(template, parameters, refs=refs, attributes=attributes, stack_name=stack_name)
    evaluator.add_ref("ConsumerPolicy", _create_consumer_policy(template, evaluator, stack_name))
    values = _declared_parameters(template, evaluator, stack_name)
    ssm = boto3.client("ssm")
    for suffix, value in values.items():
        ssm.put_parameter(Name=parameter_name(suffix, stack_name), Value=value, Type="String", Overwrite=True)
    return PublishedParameters(stack_name, values)


class _LocalEvaluator(Evaluator):
    """local.template's evaluator with the local resources' values for `Ref` and `Fn::GetAtt`, and Fn::Join."""

    def __init__(
        self,
        template: dict[str, Any],
        parameters: Mapping[str, str],
        *,
        refs: dict[str, str],
        attributes: Mapping[str, str],
        stack_name: str,
    ) -> None:
        super().__init__(template, parameters, resources=refs, region=REGION, stack_name=stack_name)
        self._refs = dict(refs)
        self._attributes = dict(attributes)
        # Fn::Sub looks names up in the values: ${EncryptionKey.Arn} as well as ${TokenSecret}.
        self.values.update(attributes)

    def add_ref(self, logical_id: str, value: str) -> None:
        """A resource created after the evaluator (the consumer policy, whose document it evaluates)."""
        self._refs[logical_id] = self.values[logical_id] = value

    def resolve(self, node: Any) -> Any:
        if isinstance(node, dict) and len(node) == 1:
            ((function, argument),) = node.items()
            if function == "Ref" and argument in self._refs:
                return self._refs[argument]
            if function == "Fn::GetAtt":
                target = argument if isinstance(argument, str) else ".".join(argument)
                if target in self._attributes:
                    return self._attributes[target]
            if function == "Fn::Join":
                separator, items = argument
                return separator.join(str(item) for item in self.resolve(items))
        return super().resolve(node)

    def resolved(self, node: Any, where: str) -> Any:
        """`node` resolved, or ValueError if it still holds something only CloudFormation knows."""
        value = self.resolve(node)
        leftover = re.search(r"<[A-Za-z][\w.: ]*>", json.dumps(value))
        if leftover:
            raise ValueError(f"template.yaml's {where} needs {leftover.group(0)}, which the local stack does not have")
        return value


def _resources_of_type(template: dict[str, Any], evaluator: Evaluator, kind: str) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == kind and ("Condition" not in resource or evaluator.condition(resource["Condition"]))
    }


def _declared_parameters(template: dict[str, Any], evaluator: _LocalEvaluator, stack_name: str) -> dict[str, str]:
    """Suffix -> value of the template's AWS::SSM::Parameter resources under /usage-engine/<stack name>/."""
    prefix = parameter_name("", stack_name)
    values: dict[str, str] = {}
    for logical_id, resource in _resources_of_type(template, evaluator, "AWS::SSM::Parameter").items():
        properties = resource["Properties"]
        name = str(evaluator.resolved(properties["Name"], f"{logical_id}.Name"))
        if name.startswith(prefix):
            values[name.removeprefix(prefix)] = str(evaluator.resolved(properties["Value"], f"{logical_id}.Value"))
    return values


def _create_consumer_policy(template: dict[str, Any], evaluator: _LocalEvaluator, stack_name: str) -> str:
    """The template's ConsumerPolicy in moto's IAM, its document evaluated with the local resources."""
    properties = template["Resources"]["ConsumerPolicy"]["Properties"]
    document = evaluator.resolved(properties["PolicyDocument"], "ConsumerPolicy.PolicyDocument")
    policy = boto3.client("iam").create_policy(
        PolicyName=f"{stack_name}-ConsumerPolicy",
        Path=str(properties.get("Path", "/")),
        PolicyDocument=json.dumps(document),
    )
    return str(policy["Policy"]["Arn"])


def _arn(sqs: Any, queue_url: str) -> str:
    return str(sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])


MeterEventEntry = tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], datetime]


def publish_meter_events(bus: str, events: Sequence[MeterEventEntry], *, source: str = "billing.crm") -> None:
    """PutEvents as an upstream system would: (detail-type, detail) pairs, or (detail-type, detail, time)
    triples for an event whose `time` the publisher sets (EventBridge keeps it, at second resolution)."""
    client = boto3.client("events")
    for start in range(0, len(events), 10):
        entries = [_entry(bus, source, event) for event in events[start : start + 10]]
        response = client.put_events(Entries=entries)  # type: ignore[arg-type]
        if response["FailedEntryCount"]:
            raise RuntimeError(f"PutEvents failed for {response['FailedEntryCount']} entries")


def _entry(bus: str, source: str, event: MeterEventEntry) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "EventBusName": bus,
        "Source": source,
        "DetailType": event[0],
        "Detail": json.dumps(event[1]),
    }
    if len(event) == 3:
        entry["Time"] = event[2]
    return entry
