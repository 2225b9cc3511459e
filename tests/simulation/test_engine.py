"""The discrete-event engine: ordering, lazy time and suspension, futures, determinism, shutdown."""

from __future__ import annotations

import threading

from local.simulation import Future, Rate, Simulation


def test_events_run_in_time_order_and_the_clock_follows() -> None:
    seen: list[tuple[str, float]] = []
    with Simulation() as sim:
        start = sim.start
        for name, offset in (("c", 3.0), ("a", 1.0), ("b", 2.0)):
            sim.at(start + offset, lambda name=name: seen.append((name, sim.now - start)))
        sim.run()
    assert seen == [("a", 1.0), ("b", 2.0), ("c", 3.0)]


def test_an_event_that_spends_time_lets_earlier_events_run_before_it_touches_shared_state() -> None:
    order: list[str] = []
    with Simulation() as sim:
        start = sim.start

        def slow() -> None:
            order.append("slow starts")
            sim.elapse(5.0)  # lazy: no other event is due before it touches shared state
            assert sim.clock() - start == 5.0
            sim.sync()  # now events at 1 s and 2 s run first, on other threads
            order.append(f"slow syncs at {sim.now - start:g}")

        sim.at(start, slow)
        sim.at(start + 1, lambda: order.append("one"))
        sim.at(start + 2, lambda: order.append("two"))
        sim.at(start + 6, lambda: order.append("six"))
        sim.run()
        assert sim.suspensions == 1
    assert order == ["slow starts", "one", "two", "slow syncs at 5", "six"]


def test_a_sync_with_nothing_due_before_does_not_suspend() -> None:
    with Simulation() as sim:

        def alone() -> None:
            sim.sleep(10)

        sim.at(sim.start, alone)
        sim.run()
        assert sim.suspensions == 0
        assert sim.now == sim.start + 10


def test_wait_returns_the_result_or_times_out() -> None:
    outcomes: list[tuple[bool, float]] = []
    with Simulation() as sim:
        start = sim.start

        def work(seconds: float) -> str:
            sim.sleep(seconds)
            return "done"

        def caller(seconds: float) -> None:
            future: Future = sim.spawn(lambda: work(seconds))
            outcomes.append((sim.wait(future, timeout=3.0), sim.now - start))

        sim.at(start, lambda: caller(1.0))
        sim.at(start + 10, lambda: caller(5.0))
        sim.run()
    assert outcomes == [(True, 1.0), (False, 13.0)]


def test_run_until_stops_and_close_unwinds_suspended_events() -> None:
    finished: list[str] = []
    before = threading.active_count()
    with Simulation() as sim:

        def long() -> None:
            sim.sleep(100)
            finished.append("long")

        sim.at(sim.start, long)
        sim.at(sim.start + 1, lambda: None)
        sim.at(sim.start + 2, lambda: None)
        sim.run(sim.start + 50)
        assert sim.now == sim.start + 50
    assert finished == []
    assert threading.active_count() <= before


def test_rate_counts_per_second() -> None:
    rate = Rate()
    for when in (10.1, 10.9, 11.0, 11.5, 11.7):
        rate.add(when)
    assert (rate.total, rate.peak(), rate.peak_second(), rate.between(11, 12)) == (5, 3, 11.0, 3)
