"""The stack's AWS resources recreated in moto: what template.yaml deploys, minus IAM and KMS.

Used by the demo and the integration tests so both exercise the same wiring: two secrets, the custom
event bus with its rule to the meter-events queue, that queue's dead-letter queue with a redrive policy, and
the meter state table (TTL on expiresAt) that keeps each meter's events in order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import boto3

from local.stack import METER_STATE_TABLE

CREDENTIALS_SECRET = "usage-engine/credentials"
TOKEN_SECRET = "usage-engine/token"
EVENT_BUS = "usage-engine-events"
METER_EVENTS_RULE = "meter-events"
DETAIL_TYPES = ["Create Meter", "Update Meter", "Delete Meter"]
MAX_RECEIVE_COUNT = 5


@dataclass(frozen=True)
class LocalResources:
    credentials_secret: str
    token_secret: str
    event_bus: str
    queue_url: str
    queue_arn: str
    dead_letter_queue_url: str
    meter_state_table: str = ""


def create_resources(*, with_events: bool = True) -> LocalResources:
    """Create the resources in whatever AWS boto3 points at (moto, via AWS_ENDPOINT_URL)."""
    secrets = boto3.client("secretsmanager")
    secrets.create_secret(Name=CREDENTIALS_SECRET, Description="Usage Engine client credentials")
    secrets.create_secret(Name=TOKEN_SECRET, Description="Usage Engine access token")
    if not with_events:
        return LocalResources(CREDENTIALS_SECRET, TOKEN_SECRET, "", "", "", "")
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
    return LocalResources(CREDENTIALS_SECRET, TOKEN_SECRET, EVENT_BUS, queue_url, queue_arn, dlq_url, METER_STATE_TABLE)


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
