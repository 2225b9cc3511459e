"""Per-meter order: which meter events still apply, given what the meter's state says was applied before.

The queue is a standard SQS queue behind EventBridge: it delivers at least once and in any order, and a record
that failed comes back only after the visibility timeout. So each meter (domain + externalRef) keeps a small
state (usage_engine.meter_state): the position of the last event applied to it, the position of the Create of
the live meter, and a tombstone when it was deleted. These rules are pure; the state table serialises them.

Rules (K is the event's position, compared as `Position.compare` says):
- Create: superseded when K is not after a tombstone (Delete wins ties); already done when the live meter was
  created at or after K; applied otherwise (a newer Create of a live meter moves its creation forward).
- Update: superseded when K is before the last applied event, or not after a tombstone; applied otherwise
  (the API call then finds the meter, or the event is retried until its Create has been applied).
- Delete: already done when K is not after a tombstone; superseded when K is before the last applied event
  (a publisher updates only a live meter, so a later event means the meter was created again after this
  Delete); applied otherwise, leaving a tombstone at K.

What the order cannot restore: a Create of a meter that is live is a no-op. When a publisher deletes and
creates a meter again and the Delete arrives after the second Create, the meter rightly exists in the end,
but it is the first one (same id, its value kept until the next Update), not a new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .identifiers import DOMAIN, EXTERNAL_REF, check_identifier
from .states import MessageAction

__all__ = ["Change", "MeterKey", "MeterState", "Position", "after", "verdict"]


class Change(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True)
class Position:
    """Where an event stands in its meter's history.

    `time_ms` is the EventBridge event's `time` (second resolution, as epoch milliseconds); `sequence` is the
    publisher's `detail.sequence`, a per-meter integer that grows with every event, when it sent one. Two
    positions compare by sequence when both have one, else by time.
    """

    time_ms: int
    sequence: int | None = None

    def compare(self, other: Position) -> int:
        """-1, 0 or 1 as this position is before, level with or after `other`."""
        if self.sequence is not None and other.sequence is not None:
            mine, theirs = self.sequence, other.sequence
        else:
            mine, theirs = self.time_ms, other.time_ms
        return (mine > theirs) - (mine < theirs)

    def later(self, other: Position | None) -> Position:
        return self if other is None or self.compare(other) >= 0 else other


@dataclass(frozen=True)
class MeterKey:
    """One meter as its publisher names it. `pk` is the state table's key: a domain has no "/", so it is
    unambiguous."""

    domain: str
    external_ref: str

    def __post_init__(self) -> None:
        check_identifier(DOMAIN, self.domain)
        check_identifier(EXTERNAL_REF, self.external_ref)

    @property
    def pk(self) -> str:
        return f"{self.domain}/{self.external_ref}"

    def __str__(self) -> str:
        return self.pk


@dataclass(frozen=True)
class MeterState:
    """What the state table knows of one meter. All None/False: nothing recorded (a new meter, one created
    before the table existed, or one whose state expired): the API is then the only truth."""

    last: Position | None = None  # the last event applied; for a tombstone, the Delete
    created: Position | None = None  # the Create of the live meter, when it went through this table
    deleted: bool = False
    meter_id: str | None = None

    @property
    def recorded(self) -> bool:
        return self.last is not None


def verdict(change: Change, position: Position, state: MeterState) -> MessageAction | None:
    """None when the event must be applied (calling the API); otherwise how it is acknowledged without one."""
    last = state.last
    if last is None:
        return None
    if state.deleted:
        if position.compare(last) > 0:
            return None
        return MessageAction.ALREADY_DELETED if change is Change.DELETE else MessageAction.SUPERSEDED
    created = state.created
    if change is Change.CREATE:
        return MessageAction.ALREADY_EXISTS if created is not None and position.compare(created) <= 0 else None
    return MessageAction.SUPERSEDED if position.compare(last) < 0 else None


def after(change: Change, position: Position, state: MeterState, meter_id: str | None) -> MeterState:
    """The meter's state once the event has been applied (the API call succeeded or found it already done)."""
    if change is Change.DELETE:
        return MeterState(last=position, deleted=True, meter_id=meter_id)
    live = state.recorded and not state.deleted
    last = position.later(state.last) if live else position
    if change is Change.CREATE:
        return MeterState(last=last, created=position, meter_id=meter_id)
    return MeterState(last=last, created=state.created if live else None, meter_id=meter_id)
