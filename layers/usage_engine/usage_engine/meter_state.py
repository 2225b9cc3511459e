"""The meter state table (DynamoDB): one item per meter (domain + externalRef), changed under a lease.

Applying a meter event is read state, decide (usage_engine.meter_order), call the API, write state. Two batches
may hold events of the same meter at once (the event source runs up to 5), so each meter is leased while that
happens: a conditional UpdateItem takes the lease and returns the state in the same call; the new state is
written with a PutItem conditioned on still holding it (which also drops the lease). The lease outlives the
invocation (its remaining time plus a margin), so a holder never loses it while alive; a crashed holder's
lease simply runs out. Everything here is idempotent under redelivery: an event whose API call succeeded but
whose state write did not is applied again, and the API calls are idempotent (find before create, 404 on a
repeated delete, the same PATCH again).

Item: pk, lastTime/lastSequence, createdTime/createdSequence, deleted, meterId, lastEventId, updatedAt,
expiresAt (the table's TTL attribute) and, while leased, leaseToken/leaseExpiresAt. Every write pushes
expiresAt STATE_TTL_SECONDS ahead: longer than any event can wait in the queue, the EventBridge retry window
and the dead-letter queue together (an operator may move dead letters back), so state expires only once no
event it could order is left anywhere.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from .clock import Clock, Sleep, system_clock, system_sleep
from .deadline import DeadlineBoundClient, current_deadline
from .errors import DeadlineExceededError, RetryableMessageError
from .meter_order import MeterKey, MeterState, Position
from .safe_text import client_error_code

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef

__all__ = ["STATE_TTL_SECONDS", "MeterLease", "MeterStateTable", "MeterStates"]

DAY = 86400
# Queue retention 4 days + EventBridge retries 1 day + dead-letter queue retention 14 days, with room to spare.
STATE_TTL_SECONDS = 30 * DAY
# Beyond the invocation's remaining time: Lambda's own margin, clock skew between hosts.
LEASE_MARGIN_SECONDS = 10.0
# Without a deadline scope: Lambda's longest timeout.
LONGEST_INVOCATION_SECONDS = 900.0
# Another batch holds the meter for one API call or so: wait briefly before handing the record back to SQS
# (a retry there costs the whole visibility timeout).
LEASE_WAITS_SECONDS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0)

_CONDITION_FAILED = "ConditionalCheckFailedException"


class MeterLease(Protocol):
    """A meter held by this invocation: its state as read when the lease was taken."""

    @property
    def state(self) -> MeterState: ...

    def commit(self, state: MeterState, *, event_id: str | None) -> None:
        """Write the new state and give the lease up (a lease may be committed once)."""
        ...


class MeterStates(Protocol):
    def lease(self, key: MeterKey) -> contextlib.AbstractContextManager[MeterLease]:
        """Hold `key` for the block (RetryableMessageError when another invocation keeps it); a lease that was
        not committed is given up unchanged when the block ends."""
        ...


class _Lease:
    def __init__(self, table: MeterStateTable, key: MeterKey, token: str, state: MeterState) -> None:
        self._table = table
        self.key = key
        self.token = token
        self._state = state
        self.committed = False

    @property
    def state(self) -> MeterState:
        return self._state

    def commit(self, state: MeterState, *, event_id: str | None) -> None:
        if self.committed:
            raise RuntimeError("a lease is committed once")
        self._table._write(self, state, event_id)
        self.committed = True


class MeterStateTable:
    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        *,
        clock: Clock = system_clock,
        sleep: Sleep = system_sleep,
        waits: tuple[float, ...] = LEASE_WAITS_SECONDS,
        client_within: Callable[[float], DynamoDBClient] | None = None,
        full_wait_seconds: float = 0.0,
    ) -> None:
        self._clients = DeadlineBoundClient(client, client_within, full_wait_seconds=full_wait_seconds)
        self.table_name = table_name
        self._clock = clock
        self._sleep = sleep
        self._waits = waits

    @contextlib.contextmanager
    def lease(self, key: MeterKey) -> Iterator[MeterLease]:
        lease = self._acquire(key)
        try:
            yield lease
        finally:
            if not lease.committed:
                self._release(lease)

    def read(self, key: MeterKey) -> MeterState:
        """The state as it is now (strongly consistent), for operators and tests; changes go through a lease."""
        response = self._call("GetItem", Key=_key(key), ConsistentRead=True)
        return _state(response.get("Item") or {})

    # --- the lease -------------------------------------------------------------------------------------------
    def _acquire(self, key: MeterKey) -> _Lease:
        token = uuid.uuid4().hex
        for wait in (*self._waits, None):
            now = self._clock()
            remaining = min(current_deadline().remaining(), LONGEST_INVOCATION_SECONDS)
            try:
                response = self._call(
                    "UpdateItem",
                    Key=_key(key),
                    UpdateExpression="SET leaseToken = :token, leaseExpiresAt = :until, "
                    "expiresAt = if_not_exists(expiresAt, :orphan)",
                    # Our own token too: the SDK may resend a request whose answer it did not get.
                    ConditionExpression="attribute_not_exists(leaseToken) OR leaseExpiresAt < :now "
                    "OR leaseToken = :token",
                    ExpressionAttributeValues={
                        ":token": {"S": token},
                        ":until": _number(now + remaining + LEASE_MARGIN_SECONDS),
                        ":now": _number(now),
                        # A lease on a meter with no state yet leaves an item that expires if nothing commits.
                        ":orphan": _number(now + STATE_TTL_SECONDS),
                    },
                    ReturnValues="ALL_NEW",
                )
            except _BusyError:
                if wait is None or current_deadline().remaining() <= wait:
                    break
                self._sleep(wait)
                continue
            return _Lease(self, key, token, _state(response.get("Attributes") or {}))
        raise RetryableMessageError(f"meter {key} is being changed by another invocation")

    def _write(self, lease: _Lease, state: MeterState, event_id: str | None) -> None:
        now = self._clock()
        item: dict[str, AttributeValueTypeDef] = {
            **_key(lease.key),
            "deleted": {"BOOL": state.deleted},
            "updatedAt": _number(now),
            "expiresAt": _number(now + STATE_TTL_SECONDS),
        }
        _put_position(item, "last", state.last)
        _put_position(item, "created", state.created)
        if state.meter_id is not None:
            item["meterId"] = {"S": state.meter_id}
        if event_id is not None:
            item["lastEventId"] = {"S": event_id}
        try:
            self._call(
                "PutItem",
                Item=item,
                ConditionExpression="leaseToken = :token",
                ExpressionAttributeValues={":token": {"S": lease.token}},
            )
        except _BusyError:
            # Only if this invocation outlived its lease: redelivery applies the event again (idempotently).
            raise RetryableMessageError(f"meter {lease.key}: the lease ran out before its state was written") from None

    def _release(self, lease: _Lease) -> None:
        values: dict[str, AttributeValueTypeDef] = {":token": {"S": lease.token}}
        with contextlib.suppress(_BusyError, RetryableMessageError, DeadlineExceededError):
            # Failing to give the lease up (even for want of time) is no reason to fail the record, nor to hide
            # why it failed: the lease runs out by itself.
            if lease.state.recorded:
                self._call(
                    "UpdateItem",
                    Key=_key(lease.key),
                    UpdateExpression="REMOVE leaseToken, leaseExpiresAt",
                    ConditionExpression="leaseToken = :token",
                    ExpressionAttributeValues=values,
                )
            else:
                self._call(
                    "DeleteItem",
                    Key=_key(lease.key),
                    ConditionExpression="leaseToken = :token AND attribute_not_exists(lastTime)",
                    ExpressionAttributeValues=values,
                )

    def _call(self, operation: str, **arguments: Any) -> Any:
        client = self._clients.for_now(f"meter state table {operation}")
        methods: dict[str, Callable[..., Any]] = {
            "GetItem": client.get_item,
            "UpdateItem": client.update_item,
            "PutItem": client.put_item,
            "DeleteItem": client.delete_item,
        }
        try:
            return methods[operation](TableName=self.table_name, **arguments)
        except ClientError as error:
            code = client_error_code(error)
            if code == _CONDITION_FAILED:
                raise _BusyError from None
            raise RetryableMessageError(f"meter state table: {operation} failed: {code}") from None
        except BotoCoreError as error:
            raise RetryableMessageError(f"meter state table: {operation} failed: {type(error).__name__}") from None


class _BusyError(Exception):
    """A condition of a state write did not hold: another invocation holds (or took over) the lease."""


def _key(key: MeterKey) -> dict[str, AttributeValueTypeDef]:
    return {"pk": {"S": key.pk}}


def _number(value: float) -> AttributeValueTypeDef:
    # Whole milliseconds at most: DynamoDB numbers are decimal, a float's repr may not be.
    return {"N": str(math.floor(value * 1000) / 1000)}


def _put_position(item: dict[str, AttributeValueTypeDef], name: str, position: Position | None) -> None:
    if position is None:
        return
    item[f"{name}Time"] = {"N": str(position.time_ms)}
    if position.sequence is not None:
        item[f"{name}Sequence"] = {"N": str(position.sequence)}


def _position(item: dict[str, Any], name: str) -> Position | None:
    time_ms = item.get(f"{name}Time", {}).get("N")
    if time_ms is None:
        return None
    sequence = item.get(f"{name}Sequence", {}).get("N")
    return Position(int(time_ms), int(sequence) if sequence is not None else None)


def _state(item: dict[str, Any]) -> MeterState:
    return MeterState(
        last=_position(item, "last"),
        created=_position(item, "created"),
        deleted=bool(item.get("deleted", {}).get("BOOL", False)),
        meter_id=item.get("meterId", {}).get("S"),
    )
