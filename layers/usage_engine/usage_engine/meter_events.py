"""Meter events: upstream systems publish "Create/Update/Delete Meter" on an EventBridge bus; a rule sends
them to SQS; the meter_events Lambda applies them to the Usage Metering API.

Each message ends in exactly one of: applied (possibly "already done", since SQS delivers at least once),
superseded (older than what its meter already reflects), dead-lettered with its reason (it can never succeed
as it is), or raised as retryable (SQS redelivers it). Events of one meter (domain + externalRef) apply in the
order the publisher sent them (usage_engine.meter_order, under a lease of the meter state table). Events that
name a meter by meterId only are applied as they arrive: they have no place in that order.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .dead_letter import DeadLetterQueue
from .errors import (
    ConfigurationError,
    MalformedMessageError,
    RetryableMessageError,
    UsageEngineApiError,
    UsageEngineError,
)
from .identifiers import (
    DOMAIN,
    EXTERNAL_REF,
    METER_ID,
    METER_TYPE_ID,
    USER_ID,
    IdentifierRule,
    InvalidIdentifierError,
    check_identifier,
)
from .meter_order import Change, MeterKey, Position, after, verdict
from .meter_state import MeterStates
from .metering import METERS_PATH, UsageMeteringApi
from .states import MessageAction

__all__ = [
    "CreateMeter",
    "DeleteMeter",
    "MalformedMessageError",
    "MessageOutcome",
    "MeterEvent",
    "MeterEventHandler",
    "MeterRef",
    "RetryableMessageError",
    "UpdateMeter",
    "max_receive_count_from_env",
    "parse_meter_event",
    "read_meter_event",
    "sorted_records",
]

DETAIL_TYPES = ("Create Meter", "Update Meter", "Delete Meter")
MAX_SEQUENCE = 2**63 - 1
# The meter events queue's redrive policy (template.yaml, MeterEventsQueue): the delivery SQS makes last.
DEFAULT_MAX_RECEIVE_COUNT = 5
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_TIME_LENGTH = 40
_MAX_EVENT_ID_LENGTH = 128


@dataclass(frozen=True)
class MeterRef:
    meter_id: str | None = None
    domain: str | None = None
    external_ref: str | None = None

    @property
    def key(self) -> MeterKey | None:
        if self.domain is None or self.external_ref is None:
            return None
        return MeterKey(self.domain, self.external_ref)


@dataclass(frozen=True)
class CreateMeter:
    domain: str
    external_ref: str
    meter_type_id: str
    user_id: str


@dataclass(frozen=True)
class UpdateMeter:
    ref: MeterRef
    changes: dict[str, Any]


@dataclass(frozen=True)
class DeleteMeter:
    ref: MeterRef


MeterCommand = CreateMeter | UpdateMeter | DeleteMeter


@dataclass(frozen=True)
class MeterEvent:
    """A command with its place in its meter's history (None for events that name a meterId only)."""

    command: MeterCommand
    position: Position | None
    event_id: str | None = None

    @property
    def key(self) -> MeterKey | None:
        if isinstance(self.command, CreateMeter):
            return MeterKey(self.command.domain, self.command.external_ref)
        return self.command.ref.key

    @property
    def change(self) -> Change:
        if isinstance(self.command, CreateMeter):
            return Change.CREATE
        return Change.UPDATE if isinstance(self.command, UpdateMeter) else Change.DELETE


def parse_meter_event(body: str) -> MeterCommand:
    """Parse an SQS body holding an EventBridge event; MalformedMessageError names what is wrong."""
    return _command(_event(body))


def read_meter_event(body: str) -> MeterEvent:
    """The command and its position: the event's `time` and the publisher's optional `detail.sequence`. An
    event that names its meter by domain and externalRef cannot be ordered without `time`."""
    event = _event(body)
    command = _command(event)
    position = _position(event)
    meter_event = MeterEvent(command, position, _event_id(event))
    if position is None and meter_event.key is not None:
        raise MalformedMessageError("time must be the event's timestamp (EventBridge sets it): it orders the meter")
    return meter_event


def _event(body: str) -> dict[str, Any]:
    try:
        event = json.loads(body)
    except (ValueError, TypeError, RecursionError):
        raise MalformedMessageError("body is not JSON") from None
    if not isinstance(event, dict):
        raise MalformedMessageError("body is not a JSON object")
    return event


def _command(event: dict[str, Any]) -> MeterCommand:
    detail_type = event.get("detail-type")
    if detail_type not in DETAIL_TYPES:
        raise MalformedMessageError(f"detail-type must be one of {', '.join(DETAIL_TYPES)}")
    detail = event.get("detail")
    if not isinstance(detail, dict):
        raise MalformedMessageError("detail must be a JSON object")
    if detail_type == "Create Meter":
        return CreateMeter(
            domain=_identifier(detail, DOMAIN),
            external_ref=_identifier(detail, EXTERNAL_REF),
            meter_type_id=_identifier(detail, METER_TYPE_ID),
            user_id=_identifier(detail, USER_ID),
        )
    ref = _meter_ref(detail)
    if detail_type == "Delete Meter":
        return DeleteMeter(ref)
    changes: dict[str, Any] = {}
    if "value" in detail:
        value = detail["value"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
            raise MalformedMessageError("detail.value must be a finite number")
        changes["value"] = value
    if "resetAt" in detail:
        reset_at = detail["resetAt"]
        if reset_at is not None and (not isinstance(reset_at, str) or not reset_at.strip()):
            raise MalformedMessageError("detail.resetAt must be a timestamp string or null")
        changes["reset_at"] = reset_at
    if not changes:
        raise MalformedMessageError("Update Meter needs detail.value and/or detail.resetAt")
    return UpdateMeter(ref, changes)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond float range (JSON allows 400-digit numbers) is no meter reading
        return False


def _identifier(detail: dict[str, Any], rule: IdentifierRule) -> str:
    try:
        return check_identifier(rule, detail.get(rule.field))
    except InvalidIdentifierError as error:
        raise MalformedMessageError(f"detail.{error}") from None


def _meter_ref(detail: dict[str, Any]) -> MeterRef:
    if "meterId" in detail:
        return MeterRef(meter_id=_identifier(detail, METER_ID))
    if "externalRef" in detail:
        return MeterRef(domain=_identifier(detail, DOMAIN), external_ref=_identifier(detail, EXTERNAL_REF))
    raise MalformedMessageError("detail needs meterId, or domain and externalRef")


def _position(event: dict[str, Any]) -> Position | None:
    detail = event.get("detail") or {}
    sequence = detail.get("sequence")
    if sequence is not None and (
        isinstance(sequence, bool) or not isinstance(sequence, int) or not 0 <= sequence <= MAX_SEQUENCE
    ):
        raise MalformedMessageError("detail.sequence must be an integer from 0 to 2^63-1")
    if "time" not in event:
        return None
    return Position(_time_ms(event["time"]), sequence)


def _time_ms(value: Any) -> int:
    problem = "time must be an ISO 8601 timestamp with a time zone, e.g. 2026-11-28T12:00:00Z"
    if not isinstance(value, str) or len(value) > _MAX_TIME_LENGTH:
        raise MalformedMessageError(problem)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise MalformedMessageError(problem) from None
    if moment.tzinfo is None:
        raise MalformedMessageError(problem)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _event_id(event: dict[str, Any]) -> str | None:
    # For the state table's record of what was applied last; EventBridge ids are UUIDs.
    value = event.get("id")
    if isinstance(value, str) and 0 < len(value) <= _MAX_EVENT_ID_LENGTH and value.isascii() and value.isprintable():
        return value
    return None


def sorted_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A batch in the order its events were published, meter by meter (Create before Update before Delete
    when their positions tie), so that events published together need no redelivery to apply in order.
    Records that cannot be read go last; correctness never depends on this order."""
    return sorted(records, key=_batch_position)


_CHANGE_RANK = {Change.CREATE: 0, Change.UPDATE: 1, Change.DELETE: 2}


def _batch_position(record: Mapping[str, Any]) -> tuple[int, str, int, int, int]:
    """(group, meter, clock, position, change): events by meter id first (they have no order), then meter by
    meter, sequenced events before timed ones (each compares only with its own kind), unreadable records last."""
    try:
        event = read_meter_event(str(record.get("body", "")))
    except MalformedMessageError:
        return (2, "", 0, 0, 0)
    key, position, rank = event.key, event.position, _CHANGE_RANK[event.change]
    if key is None or position is None:
        return (0, "", 0, 0, rank)
    if position.sequence is not None:
        return (1, key.pk, 0, position.sequence, rank)
    return (1, key.pk, 1, position.time_ms, rank)


def max_receive_count_from_env(env: Mapping[str, str] | None = None) -> int:
    """MAX_RECEIVE_COUNT: the queue's redrive maxReceiveCount (template.yaml sets both from one value)."""
    raw = (os.environ if env is None else env).get("MAX_RECEIVE_COUNT", "").strip()
    if not raw:
        return DEFAULT_MAX_RECEIVE_COUNT
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise ConfigurationError("MAX_RECEIVE_COUNT", "must be an integer from 1 to 1000 (SQS's range)")
    return int(raw)


@dataclass(frozen=True)
class MessageOutcome:
    action: MessageAction
    meter_id: str | None = None
    reason: str | None = None

    @property
    def dead_lettered(self) -> bool:
        return self.action == MessageAction.DEAD_LETTERED


class MeterEventHandler:
    def __init__(self, api: UsageMeteringApi, dead_letters: DeadLetterQueue, states: MeterStates) -> None:
        self._api = api
        self._dead_letters = dead_letters
        self._states = states

    def handle_delivery(
        self, body: str, message_id: str, *, receive_count: int, max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT
    ) -> MessageOutcome:
        """`handle`, knowing which delivery this is: on the last one SQS makes (the queue's maxReceiveCount),
        a retryable failure is dead-lettered with its reason instead of being moved there without one."""
        try:
            return self.handle(body, message_id)
        except RetryableMessageError as error:
            if receive_count < max_receive_count:
                raise
            return self._dead_letter(body, message_id, f"{error} after {receive_count} deliveries")

    def defer(
        self, body: str, message_id: str, *, reason: str, receive_count: int, max_receive_count: int
    ) -> MessageOutcome:
        """Leave a message for a later delivery without starting it (e.g. too little time left): raises
        RetryableMessageError, except on its last delivery, where it is dead-lettered with `reason`."""
        if receive_count < max_receive_count:
            raise RetryableMessageError(reason)
        return self._dead_letter(body, message_id, f"{reason} on delivery {receive_count}")

    def handle(self, body: str, message_id: str) -> MessageOutcome:
        """Apply one message. Raises RetryableMessageError (and only that) when SQS should redeliver it."""
        try:
            return self._apply(read_meter_event(body))
        except (MalformedMessageError, InvalidIdentifierError) as error:
            # InvalidIdentifierError here: a meter id the API itself returned, refused before any request.
            return self._dead_letter(body, message_id, str(error))
        except RetryableMessageError:
            raise
        except UsageEngineApiError as error:
            if error.retryable:
                raise RetryableMessageError(str(error)) from error
            return self._dead_letter(body, message_id, str(error))
        except UsageEngineError as error:
            # No token, Secrets Manager trouble, refresher down: nothing wrong with the message.
            raise RetryableMessageError(str(error)) from error

    def _dead_letter(self, body: str, message_id: str, reason: str) -> MessageOutcome:
        # If this send fails it raises, the message is reported as failed, and SQS redelivers it.
        self._dead_letters.send(body, reason=reason, source_message_id=message_id)
        return MessageOutcome(MessageAction.DEAD_LETTERED, reason=reason)

    def _apply(self, event: MeterEvent) -> MessageOutcome:
        key, position = event.key, event.position
        if key is None or position is None:
            return self._apply_by_id(event.command)
        with self._states.lease(key) as lease:
            done = verdict(event.change, position, lease.state)
            if done is not None:
                return MessageOutcome(done, meter_id=lease.state.meter_id)
            outcome = self._call_api(event.command, key)
            lease.commit(after(event.change, position, lease.state, outcome.meter_id), event_id=event.event_id)
            return outcome

    def _call_api(self, command: MeterCommand, key: MeterKey) -> MessageOutcome:
        if isinstance(command, CreateMeter):
            meter, created = self._api.ensure_meter(
                domain=command.domain,
                external_ref=command.external_ref,
                meter_type_id=command.meter_type_id,
                user_id=command.user_id,
            )
            action = MessageAction.CREATED if created else MessageAction.ALREADY_EXISTS
            return MessageOutcome(action, meter_id=_meter_id(meter))
        found = self._api.find_meter(domain=key.domain, external_ref=key.external_ref)
        meter_id = _meter_id(found) if found is not None else None
        if isinstance(command, DeleteMeter):
            if meter_id is None:
                return MessageOutcome(MessageAction.ALREADY_DELETED)
            return self._delete(meter_id)
        if meter_id is None:
            # Its Create may still be on its way (SQS delivers in any order): retried, and dead-lettered with
            # this reason only after the queue's last delivery.
            raise RetryableMessageError(f"no meter {key}")
        self._api.update_meter(meter_id, **command.changes)
        return MessageOutcome(MessageAction.UPDATED, meter_id=meter_id)

    def _apply_by_id(self, command: MeterCommand) -> MessageOutcome:
        # The parser gives a meter id to every command without a key (a Create always has a key).
        meter_id = None if isinstance(command, CreateMeter) else command.ref.meter_id
        if meter_id is None:
            raise MalformedMessageError("detail needs meterId, or domain and externalRef")
        if isinstance(command, UpdateMeter):
            self._api.update_meter(meter_id, **command.changes)
            return MessageOutcome(MessageAction.UPDATED, meter_id=meter_id)
        return self._delete(meter_id)

    def _delete(self, meter_id: str) -> MessageOutcome:
        deleted = self._api.delete_meter(meter_id)
        return MessageOutcome(MessageAction.DELETED if deleted else MessageAction.ALREADY_DELETED, meter_id=meter_id)


def _meter_id(meter: Mapping[str, Any]) -> str:
    """The id of a meter the API returned, checked like any identifier before it goes into a path."""
    meter_id = meter.get("id")
    if isinstance(meter_id, int) and not isinstance(meter_id, bool):
        meter_id = str(meter_id)
    if not isinstance(meter_id, str) or not meter_id:
        raise UsageEngineApiError("GET", METERS_PATH, 200, "a meter in the answer has no id")
    return check_identifier(METER_ID, meter_id)
