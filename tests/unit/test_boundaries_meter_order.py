"""The per-meter order rules at their edges: positions that compare level, and the state after an event for
states the handler's flow does not produce but the table could hold."""

from __future__ import annotations

from usage_engine.meter_order import Change, MeterState, Position, after


def test_of_two_level_positions_the_later_is_the_one_asked() -> None:
    # Level by sequence although their times differ: the position asked keeps its own time.
    mine, theirs = Position(2_000, 5), Position(1_000, 5)
    assert mine.compare(theirs) == 0
    assert mine.later(theirs) is mine
    assert theirs.later(mine) is theirs
    assert Position(1_000).later(Position(1_000)) == Position(1_000)
    assert Position(1_000).later(Position(2_000)) == Position(2_000)
    assert Position(1_000).later(None) == Position(1_000)


def test_after_a_tombstone_the_new_event_starts_the_history_even_if_earlier() -> None:
    tombstone = MeterState(last=Position(5_000), deleted=True, meter_id="m-1")
    state = after(Change.UPDATE, Position(4_000), tombstone, "m-2")
    assert state == MeterState(last=Position(4_000), created=None, meter_id="m-2")


def test_an_update_of_a_meter_that_is_not_live_carries_no_create() -> None:
    tombstone = MeterState(last=Position(5_000), created=Position(1_000), deleted=True)
    assert after(Change.UPDATE, Position(6_000), tombstone, None).created is None
    unrecorded = MeterState(created=Position(1_000))
    assert after(Change.UPDATE, Position(6_000), unrecorded, None) == MeterState(last=Position(6_000))


def test_an_update_of_a_live_meter_keeps_its_create_and_the_later_position() -> None:
    live = MeterState(last=Position(5_000), created=Position(1_000), meter_id="m-1")
    assert after(Change.UPDATE, Position(4_000), live, "m-1") == MeterState(
        last=Position(5_000), created=Position(1_000), meter_id="m-1"
    )
