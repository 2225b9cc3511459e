"""The discrete-event engine: events on a virtual clock, run one at a time, deterministically for a seed.

How time works. Every event runs at `Simulation.now`. Code inside an event reads `Simulation.clock()`,
which is `now` plus the time the event has spent so far (latencies, backoffs: `elapse()`); that time is
"lazy" until the event touches shared state (a secret, the refresher's concurrency slot, the IdP's rate
limiter): then `sync()` moves the event to its own time first, running every earlier event before it. An
event that has to wait while others run is suspended on its own thread (the synchronous layer code cannot
yield otherwise); exactly one thread runs at a time, so a run is deterministic for a seed. Events that
never touch shared state after a latency (a warm invocation: cached token, one API call) never suspend.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

# A fixed, whole-second epoch: reports count calls per wall-clock second from here.
EPOCH = 1_800_000_000.0
HOUR = 3600.0
MINUTE = 60.0
_THREAD_STACK_BYTES = 1 << 20


class SimulationClosed(BaseException):
    """Unwinds an event suspended when the simulation closes (a BaseException: the layer must not catch it)."""


class _Wait:
    """One suspended thread's ticket; a ticket woken once (result or timeout) ignores later wake-ups."""

    __slots__ = ("active", "worker")

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        self.active = True


class _Worker:
    """A thread that can run the event loop. Its lock is held while it runs; acquiring it again waits."""

    __slots__ = ("lock",)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()


_Entry = tuple[float, int, Callable[[], None] | None, _Wait | None]


class Future:
    """The result of work spawned on the simulation (for example one refresher run)."""

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self._waits: list[_Wait] = []


class Simulation:
    """Events on a virtual clock. Use as a context manager: it seeds `random` and restores it afterwards
    (the layer's jitter and urllib3's backoff use the module-level generator)."""

    def __init__(self, *, seed: int = 1, start: float = EPOCH) -> None:
        self.seed = seed
        self.start = start
        self.now = start
        self.rng = random.Random(seed)
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._pending = 0.0
        self._until = start
        self._idle: list[_Worker] = []
        self._workers: list[_Worker] = []
        self._threads: list[threading.Thread] = []
        self._local = threading.local()
        self._done = threading.Lock()
        self._done.acquire()
        self._error: BaseException | None = None
        self._closed = False
        self._saved_random: Any = None
        self.events = 0
        self.suspensions = 0
        self.max_threads = 0

    # -- time as the code under test sees it

    def clock(self) -> float:
        """The running event's own time: `now` plus what it has spent since it last synced."""
        return self.now + self._pending

    def elapse(self, seconds: float) -> None:
        """Spend time in the running event (a latency, a backoff); takes effect lazily (see `sync`)."""
        if seconds > 0:
            self._pending += seconds

    def sync(self) -> None:
        """Before touching shared state: let every event due before this event's own time run first."""
        pending = self._pending
        if pending > 0:
            self._pending = 0.0
            self._advance(self.now + pending)

    def sleep(self, seconds: float) -> None:
        self.elapse(seconds)
        self.sync()

    # -- scheduling

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), action, None))

    def after(self, seconds: float, action: Callable[[], None]) -> None:
        self.at(self.clock() + seconds, action)

    def spawn(self, work: Callable[[], Any]) -> Future:
        """Run `work` as its own event at the current event's time; the result lands in the Future."""
        future = Future()

        def run() -> None:
            value = work()
            self.sync()
            future.done = True
            future.value = value
            for wait in future._waits:
                if wait.active:
                    heapq.heappush(self._heap, (self.now, next(self._seq), None, wait))

        self.at(self.clock(), run)
        return future

    def wait(self, future: Future, timeout: float) -> bool:
        """Suspend the running event until `future` is done (True) or `timeout` seconds pass (False)."""
        self.sync()
        if future.done:
            return True
        wait = _Wait(self._local.worker)
        future._waits.append(wait)
        heapq.heappush(self._heap, (self.now + timeout, next(self._seq), None, wait))
        self._suspend(wait)
        return future.done

    # -- running

    def run(self, until: float = math.inf) -> None:
        """Run events up to `until` (absolute time); with the default, until none is left."""
        if self._closed:
            raise RuntimeError("simulation closed")
        self._until = until
        self._hand_over()
        self._done.acquire()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Stop: threads still suspended in an event unwind (SimulationClosed), idle ones exit."""
        if self._closed:
            return
        self._closed = True
        suspended = [wait for _, _, _, wait in self._heap if wait is not None and wait.active]
        self._heap.clear()
        for wait in suspended:
            wait.active = False
            wait.worker.lock.release()
        for worker in self._idle:
            worker.lock.release()
        self._idle.clear()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> Simulation:
        self._saved_random = random.getstate()
        random.seed(self.seed)
        return self

    def __exit__(self, *_: object) -> None:
        try:
            self.close()
        finally:
            random.setstate(self._saved_random)

    # -- internals: one thread at a time holds the "baton" and runs the loop

    def _advance(self, when: float) -> None:
        heap = self._heap
        if not heap or heap[0][0] >= when:
            # Nothing else happens before `when`: no need to give way.
            self.now = when
            return
        wait = _Wait(self._local.worker)
        heapq.heappush(heap, (when, next(self._seq), None, wait))
        self._suspend(wait)

    def _suspend(self, wait: _Wait) -> None:
        self.suspensions += 1
        self._hand_over()
        wait.worker.lock.acquire()
        if self._closed:
            raise SimulationClosed

    def _hand_over(self) -> None:
        """Let another (idle or new) thread run the loop."""
        if self._idle:
            worker = self._idle.pop()
        else:
            worker = _Worker()
            previous = threading.stack_size(_THREAD_STACK_BYTES)
            try:
                thread = threading.Thread(target=self._work, args=(worker,), name="simulation", daemon=True)
                thread.start()
            finally:
                threading.stack_size(previous)
            self._workers.append(worker)
            self._threads.append(thread)
            self.max_threads = len(self._threads)
        worker.lock.release()

    def _work(self, worker: _Worker) -> None:
        self._local.worker = worker
        while True:
            worker.lock.acquire()
            if self._closed:
                return
            self._loop(worker)
            if self._closing():
                return

    def _closing(self) -> bool:
        # A call rather than the attribute: the loop may have closed the simulation since the check before it.
        return self._closed

    def _loop(self, me: _Worker) -> None:
        heap = self._heap
        while True:
            if not heap or heap[0][0] > self._until:
                if self._until != math.inf and self._until > self.now:
                    self.now = self._until
                self._idle.append(me)
                self._done.release()
                return
            when, _, action, wait = heapq.heappop(heap)
            if when > self.now:
                self.now = when
            if wait is not None:
                if not wait.active:
                    continue
                wait.active = False
                # That thread continues its event (and then this loop); this one goes idle.
                self._idle.append(me)
                wait.worker.lock.release()
                return
            self.events += 1
            self._pending = 0.0
            try:
                # Entries without a wait always carry an action.
                cast(Callable[[], None], action)()
            except SimulationClosed:
                return
            except BaseException as error:  # noqa: BLE001 - a bug in a scenario: stop, re-raise in run()
                self._error = error
                heap.clear()
                self._idle.append(me)
                self._done.release()
                return
            self._pending = 0.0


class Rate:
    """Calls per wall-clock second of simulated time."""

    def __init__(self) -> None:
        self.per_second: Counter[int] = Counter()
        self.total = 0

    def add(self, when: float, count: int = 1) -> None:
        self.per_second[int(when)] += count
        self.total += count

    def peak(self) -> int:
        return max(self.per_second.values(), default=0)

    def peak_second(self) -> float | None:
        if not self.per_second:
            return None
        return float(max(self.per_second.items(), key=lambda item: (item[1], -item[0]))[0])

    def between(self, start: float, end: float) -> int:
        return sum(count for second, count in self.per_second.items() if start <= second < end)
