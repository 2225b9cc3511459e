"""The meter state table over botocore's Stubber (every request checked against DynamoDB's model, and here
against the exact parameters): the lease's UpdateItem, the committing PutItem, giving a lease back, reading,
and the busy and failing answers. The lease token is fixed (uuid4 patched) so that requests can be compared."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.session import Session
from botocore.stub import Stubber

from usage_engine.aws_clients import new_dynamodb_client, new_session
from usage_engine.deadline import Deadline, deadline_scope
from usage_engine.errors import RetryableMessageError
from usage_engine.meter_order import MeterKey, MeterState, Position
from usage_engine.meter_state import (
    LEASE_MARGIN_SECONDS,
    LEASE_WAITS_SECONDS,
    LONGEST_INVOCATION_SECONDS,
    STATE_TTL_SECONDS,
    MeterStateTable,
)

TABLE = "meter-state"
KEY = MeterKey("acme", "ref-1")
TOKEN = uuid.UUID(int=7).hex
NOW = 1_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def dynamo(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Stubber]]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_DYNAMODB", raising=False)
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=7))
    session: Session = new_session()
    client = new_dynamodb_client(session)
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


def table(client: Any, clock: Clock | None = None, sleeps: list[float] | None = None) -> MeterStateTable:
    slept = sleeps if sleeps is not None else []
    return MeterStateTable(client, TABLE, clock=clock or Clock(), sleep=slept.append)


def number(value: float) -> dict[str, str]:
    return {"N": str(value)}


def acquire_request(now: float = NOW, remaining: float = LONGEST_INVOCATION_SECONDS) -> dict[str, Any]:
    return {
        "TableName": TABLE,
        "Key": {"pk": {"S": "acme/ref-1"}},
        "UpdateExpression": "SET leaseToken = :token, leaseExpiresAt = :until, "
        "expiresAt = if_not_exists(expiresAt, :orphan)",
        "ConditionExpression": "attribute_not_exists(leaseToken) OR leaseExpiresAt < :now OR leaseToken = :token",
        "ExpressionAttributeValues": {
            ":token": {"S": TOKEN},
            ":until": number(now + remaining + LEASE_MARGIN_SECONDS),
            ":now": number(now),
            ":orphan": number(now + STATE_TTL_SECONDS),
        },
        "ReturnValues": "ALL_NEW",
    }


STORED = {
    "pk": {"S": "acme/ref-1"},
    "lastTime": {"N": "5000"},
    "lastSequence": {"N": "3"},
    "createdTime": {"N": "1000"},
    "deleted": {"BOOL": False},
    "meterId": {"S": "m-1"},
}


def test_a_lease_reads_the_state_and_a_commit_writes_the_new_one(dynamo: tuple[Any, Stubber]) -> None:
    client, stub = dynamo
    clock = Clock()
    stub.add_response("update_item", {"Attributes": STORED}, acquire_request())
    item = {
        "pk": {"S": "acme/ref-1"},
        "deleted": {"BOOL": False},
        "updatedAt": number(NOW + 2),
        "expiresAt": number(NOW + 2 + STATE_TTL_SECONDS),
        "lastTime": {"N": "6000"},
        "lastSequence": {"N": "4"},
        "createdTime": {"N": "1000"},
        "meterId": {"S": "m-1"},
        "lastEventId": {"S": "event-9"},
    }
    put = {
        "TableName": TABLE,
        "Item": item,
        "ConditionExpression": "leaseToken = :token",
        "ExpressionAttributeValues": {":token": {"S": TOKEN}},
    }
    stub.add_response("put_item", {}, put)
    with table(client, clock).lease(KEY) as lease:
        assert lease.state == MeterState(last=Position(5000, 3), created=Position(1000), meter_id="m-1")
        clock.now += 2
        lease.commit(MeterState(last=Position(6000, 4), created=Position(1000), meter_id="m-1"), event_id="event-9")
        with pytest.raises(RuntimeError, match="committed once"):
            lease.commit(MeterState(), event_id=None)


def test_a_tombstone_is_written_without_positions_it_does_not_have(dynamo: tuple[Any, Stubber]) -> None:
    client, stub = dynamo
    stub.add_response("update_item", {"Attributes": STORED}, acquire_request())
    item = {
        "pk": {"S": "acme/ref-1"},
        "deleted": {"BOOL": True},
        "updatedAt": number(NOW),
        "expiresAt": number(NOW + STATE_TTL_SECONDS),
        "lastTime": {"N": "7000"},
    }
    stub.add_response(
        "put_item",
        {},
        {
            "TableName": TABLE,
            "Item": item,
            "ConditionExpression": "leaseToken = :token",
            "ExpressionAttributeValues": {":token": {"S": TOKEN}},
        },
    )
    with table(client).lease(KEY) as lease:
        lease.commit(MeterState(last=Position(7000), deleted=True), event_id=None)


def test_a_lease_lasts_the_invocations_remaining_time_and_a_margin(dynamo: tuple[Any, Stubber]) -> None:
    client, stub = dynamo
    clock = Clock()
    stub.add_response("update_item", {"Attributes": {}}, acquire_request(remaining=30.0))
    stub.add_response(
        "delete_item",
        {},
        {
            "TableName": TABLE,
            "Key": {"pk": {"S": "acme/ref-1"}},
            "ConditionExpression": "leaseToken = :token AND attribute_not_exists(lastTime)",
            "ExpressionAttributeValues": {":token": {"S": TOKEN}},
        },
    )
    with deadline_scope(Deadline(NOW + 30.0, clock)), table(client, clock).lease(KEY) as lease:
        # A meter with no state: giving the lease back removes the item the lease created.
        assert lease.state == MeterState()


def test_an_uncommitted_lease_of_a_recorded_meter_is_given_back(dynamo: tuple[Any, Stubber]) -> None:
    client, stub = dynamo
    stub.add_response("update_item", {"Attributes": STORED}, acquire_request())
    stub.add_response(
        "update_item",
        {},
        {
            "TableName": TABLE,
            "Key": {"pk": {"S": "acme/ref-1"}},
            "UpdateExpression": "REMOVE leaseToken, leaseExpiresAt",
            "ConditionExpression": "leaseToken = :token",
            "ExpressionAttributeValues": {":token": {"S": TOKEN}},
        },
    )
    with table(client).lease(KEY):
        pass


def test_a_busy_meter_is_waited_for_then_handed_back(dynamo: tuple[Any, Stubber]) -> None:
    client, stub = dynamo
    for _ in range(len(LEASE_WAITS_SECONDS) + 1):
        stub.add_client_error("update_item", "ConditionalCheckFailedException", expected_params=acquire_request())
    sleeps: list[float] = []
    with pytest.raises(RetryableMessageError) as caught, table(client, sleeps=sleeps).lease(KEY):
        pass
    assert str(caught.value) == "meter acme/ref-1 is being changed by another invocation"
    assert sleeps == list(LEASE_WAITS_SECONDS)


def test_a_busy_meter_is_waited_for_only_while_the_wait_fits(dynamo: tuple[Any, Stubber]) -> None:
    client, stub = dynamo
    clock = Clock()
    clock.now = 0.0  # exact arithmetic: the deadline leaves exactly the first wait
    first = LEASE_WAITS_SECONDS[0]
    request = acquire_request(now=0.0, remaining=first)
    stub.add_client_error("update_item", "ConditionalCheckFailedException", expected_params=request)
    sleeps: list[float] = []
    with (
        deadline_scope(Deadline(first, clock)),
        pytest.raises(RetryableMessageError),
        table(client, clock, sleeps).lease(KEY),
    ):
        pass
    assert sleeps == []


def test_a_busy_meter_that_frees_up_is_leased(dynamo: tuple[Any, Stubber]) -> None:
    client, stub = dynamo
    stub.add_client_error("update_item", "ConditionalCheckFailedException", expected_params=acquire_request())
    stub.add_response("update_item", {"Attributes": STORED}, acquire_request())
    stub.add_response("update_item", {})
    sleeps: list[float] = []
    with table(client, sleeps=sleeps).lease(KEY) as lease:
        assert lease.state.meter_id == "m-1"
    assert sleeps == [LEASE_WAITS_SECONDS[0]]


def test_a_lease_that_ran_out_before_the_write_is_retryable(dynamo: tuple[Any, Stubber]) -> None:
    client, stub = dynamo
    stub.add_response("update_item", {"Attributes": STORED}, acquire_request())
    stub.add_client_error("put_item", "ConditionalCheckFailedException")
    stub.add_response("update_item", {})
    with pytest.raises(RetryableMessageError) as caught, table(client).lease(KEY) as lease:
        lease.commit(MeterState(last=Position(1)), event_id=None)
    assert str(caught.value) == "meter acme/ref-1: the lease ran out before its state was written"


@pytest.mark.parametrize("code", ["ProvisionedThroughputExceededException", "ResourceNotFoundException"])
def test_other_errors_are_retryable_and_named(dynamo: tuple[Any, Stubber], code: str) -> None:
    client, stub = dynamo
    stub.add_client_error("get_item", code)
    with pytest.raises(RetryableMessageError) as caught:
        table(client).read(KEY)
    assert str(caught.value) == f"meter state table: GetItem failed: {code}"


def test_giving_a_lease_back_may_fail_without_failing_the_record(dynamo: tuple[Any, Stubber]) -> None:
    client, stub = dynamo
    stub.add_response("update_item", {"Attributes": STORED}, acquire_request())
    stub.add_client_error("update_item", "ConditionalCheckFailedException")
    with table(client).lease(KEY):
        pass
    stub.add_response("update_item", {"Attributes": {}}, acquire_request())
    stub.add_client_error("delete_item", "InternalServerError")
    with table(client).lease(KEY):
        pass


def test_read_is_strongly_consistent(dynamo: tuple[Any, Stubber]) -> None:
    client, stub = dynamo
    stub.add_response(
        "get_item", {"Item": STORED}, {"TableName": TABLE, "Key": {"pk": {"S": "acme/ref-1"}}, "ConsistentRead": True}
    )
    stub.add_response("get_item", {})
    state = table(client).read(KEY)
    assert state == MeterState(last=Position(5000, 3), created=Position(1000), meter_id="m-1")
    assert table(client).read(KEY) == MeterState()
    assert table(client).table_name == TABLE
