"""Meter events: upstream systems publish "Create/Update/Delete Meter" on an EventBridge bus; a rule sends
them to SQS; the meter_events Lambda applies them to the Usage Metering API.

Each message ends in exactly one of: applied (possibly "already done", since SQS delivers at least once),
dead-lettered with its reason (it can never succeed as it is), or raised as retryable (SQS redelivers it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .dead_letter import DeadLetterQueue
from .errors import MalformedMessageError, RetryableMessageError, UsageEngineApiError, UsageEngineError
from .metering import UsageMeteringApi
from .states import MessageAction

__all__ = [
    "CreateMeter",
    "DeleteMeter",
    "MalformedMessageError",
    "MessageOutcome",
    "MeterEventHandler",
    "MeterRef",
    "RetryableMessageError",
    "UpdateMeter",
    "parse_meter_event",
]

MAX_FIELD_LENGTH = 256
DETAIL_TYPES = ("Create Meter", "Update Meter", "Delete Meter")


@dataclass(frozen=True)
class MeterRef:
    meter_id: str | None = None
    domain: str | None = None
    external_ref: str | None = None


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


def parse_meter_event(body: str) -> MeterCommand:
    """Parse an SQS body holding an EventBridge event; MalformedMessageError names what is wrong."""
    try:
        event = json.loads(body)
    except (ValueError, TypeError, RecursionError):
        raise MalformedMessageError("body is not JSON") from None
    if not isinstance(event, dict):
        raise MalformedMessageError("body is not a JSON object")
    detail_type = event.get("detail-type")
    if detail_type not in DETAIL_TYPES:
        raise MalformedMessageError(f"detail-type must be one of {', '.join(DETAIL_TYPES)}")
    detail = event.get("detail")
    if not isinstance(detail, dict):
        raise MalformedMessageError("detail must be a JSON object")
    if detail_type == "Create Meter":
        return CreateMeter(
            domain=_text(detail, "domain"),
            external_ref=_text(detail, "externalRef"),
            meter_type_id=_text(detail, "meterTypeId"),
            user_id=_text(detail, "userId"),
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


def _text(detail: dict[str, Any], name: str) -> str:
    value = detail.get(name)
    if not isinstance(value, str) or not value.strip():
        raise MalformedMessageError(f"detail.{name} must be a non-empty string")
    if len(value) > MAX_FIELD_LENGTH:
        raise MalformedMessageError(f"detail.{name} is longer than {MAX_FIELD_LENGTH} characters")
    return value


def _meter_ref(detail: dict[str, Any]) -> MeterRef:
    if "meterId" in detail:
        return MeterRef(meter_id=_text(detail, "meterId"))
    if "externalRef" in detail:
        return MeterRef(domain=_text(detail, "domain"), external_ref=_text(detail, "externalRef"))
    raise MalformedMessageError("detail needs meterId, or domain and externalRef")


@dataclass(frozen=True)
class MessageOutcome:
    action: MessageAction
    meter_id: str | None = None
    reason: str | None = None

    @property
    def dead_lettered(self) -> bool:
        return self.action == MessageAction.DEAD_LETTERED


class MeterEventHandler:
    def __init__(self, api: UsageMeteringApi, dead_letters: DeadLetterQueue) -> None:
        self._api = api
        self._dead_letters = dead_letters

    def handle(self, body: str, message_id: str) -> MessageOutcome:
        """Apply one message. Raises RetryableMessageError (and only that) when SQS should redeliver it."""
        try:
            return self._apply(parse_meter_event(body))
        except MalformedMessageError as error:
            return self._dead_letter(body, message_id, str(error))
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

    def _apply(self, command: MeterCommand) -> MessageOutcome:
        if isinstance(command, CreateMeter):
            meter, created = self._api.ensure_meter(
                domain=command.domain,
                external_ref=command.external_ref,
                meter_type_id=command.meter_type_id,
                user_id=command.user_id,
            )
            action = MessageAction.CREATED if created else MessageAction.ALREADY_EXISTS
            return MessageOutcome(action, meter_id=str(meter.get("id")))
        meter_id = self._resolve(command.ref)
        if isinstance(command, DeleteMeter):
            if meter_id is None:
                return MessageOutcome(MessageAction.ALREADY_DELETED)
            deleted = self._api.delete_meter(meter_id)
            action = MessageAction.DELETED if deleted else MessageAction.ALREADY_DELETED
            return MessageOutcome(action, meter_id=meter_id)
        if meter_id is None:
            raise MalformedMessageError("no meter with that domain and externalRef")
        self._api.update_meter(meter_id, **command.changes)
        return MessageOutcome(MessageAction.UPDATED, meter_id=meter_id)

    def _resolve(self, ref: MeterRef) -> str | None:
        if ref.meter_id is not None:
            return ref.meter_id
        # The parser guarantees both are set when meter_id is not.
        meter = self._api.find_meter(domain=ref.domain or "", external_ref=ref.external_ref or "")
        return str(meter["id"]) if meter is not None else None
