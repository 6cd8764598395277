"""One writer thread per worker process for every reply's stream events.

A job thread hands its events over and goes back to the provider at once; the writer takes
everything waiting, one fenced append per reply, and sends the batch in one round trip. Under load
that is one round trip for many chunks of many replies, instead of one per chunk with the job
thread waiting on it; when idle, a chunk goes out as soon as it is handed over (but for a run's
first moments, below), so no latency is added. A reply's events keep their order: they wait in
the run's own list, and the writer takes a run's next events only after their predecessors are
written.

A run's last events, the ones the writer has not taken when the provider is done, go out with
the run's finish instead (``take_rest``): a short reply is then one round trip, not a write the
job waits on and then the finish.

Events a run hands over in its first ``HOLD_S`` of generation do not wake the writer: they wait
for its next tick (every ``TICK_S`` while runs hold events), so a reply that is done by then
sends them with its finish and the writer never touches it. Waking the writer thread for every
short reply cost more than anything else it does (a thread hand-off and a round trip per reply:
about 0.07 of short-turn throughput against bare RQ, docs/benchmarks.md); the price is that a
reply's first events, and any that follow while they are still held, may reach clients up to
``TICK_S`` later. A provider's chunks after that go out at once, as before.

What a write learned (fenced out, Redis unreachable) is raised in the job thread at its next
``append``, or at ``take_rest``/``wait``, one of which every run calls before it finishes, so a run
never finishes a reply with text still unwritten.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import deque
from typing import Any, Callable

import redis

from chatapp.replies import Event, FencedOut, Replies

log = logging.getLogger(__name__)

#: runs written in one round trip at most (the rest go in the next)
MAX_BATCH = 256
#: a run's events this soon after its generation starts wait for the writer's next tick
HOLD_S = 0.01
#: how often the writer takes the events runs hold (while any do)
TICK_S = 0.01
#: the writer keeps ticking this long after the last hold, so that under load no hold wakes it
AWAKE_S = 0.2
#: a queue item that only wakes the writer
_WAKE = object()


class RunWrites:
    """One job run's handle on the writer: its events go out in order; ``take_rest`` and
    ``wait`` end with nothing of the run's in the writer's hands."""

    def __init__(self, writer: "EventWriter", mid: str, token: str) -> None:
        self.writer, self.mid, self.token = writer, mid, token
        self.pending: list[Event] = []  # appended, not yet taken by the writer
        self.queued = False  # the run is in the writer's queue
        self.held = False  # the run is in the writer's held runs, for its next tick
        self.hold_until = 0.0  # (monotonic) events before then are held
        self.in_flight = False  # the writer is writing some of the run's events
        self.error: BaseException | None = None
        self._cond = threading.Condition()

    def generating(self) -> None:
        """The provider starts now: events of the next ``HOLD_S`` wait for the writer's tick, or
        go with the finish."""
        self.hold_until = time.monotonic() + HOLD_S

    def append(self, events: list[Event]) -> None:
        """Queue (type, data, text) events; raises what an earlier write of this run hit."""
        self.raise_error()
        with self._cond:
            self.pending.extend(events)
            if self.queued or self.held:
                return
            hold = time.monotonic() < self.hold_until
            if hold:
                self.held = True
            else:
                self.queued = True
        if hold:
            self.writer.hold(self)
        else:
            self.writer.submit(self)

    def take_rest(self, timeout: float = 30.0) -> list[Event]:
        """Wait for the events the writer is writing, then take back the ones it has not taken:
        the caller writes them (with the finish). Raises what a write hit."""
        with self._cond:
            self._wait_for(lambda: not self.in_flight, timeout)
            rest, self.pending = self.pending, []
        self.raise_error()
        return rest

    def wait(self, timeout: float = 30.0) -> None:
        """Block until every queued event is written; raises what a write hit."""
        with self._cond:
            self._wait_for(lambda: not self.in_flight and not self.pending, timeout)
        self.raise_error()

    def _wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        if not self._cond.wait_for(predicate, timeout):
            raise redis.TimeoutError(f"reply {self.mid}: events not written within {timeout} s")

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def _take(self) -> list[Event]:
        """The writer's side: everything pending, now in flight."""
        with self._cond:
            self.queued = self.held = False
            taken, self.pending = self.pending, []
            self.in_flight = bool(taken)
            return taken

    def _written(self, error: BaseException | None) -> None:
        with self._cond:
            self.error = self.error or error
            self.in_flight = False
            self._cond.notify_all()


class EventWriter(threading.Thread):
    def __init__(self, replies: Replies) -> None:
        super().__init__(name="chatapp-event-writer", daemon=True)
        self.replies = replies
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()  # runs to write, _WAKE, or None: stop
        self.held: deque[RunWrites] = deque()  # runs holding events for the next tick
        self.asleep = False  # waiting without a tick: a hold must wake it

    def for_run(self, mid: str) -> RunWrites:
        """A new job run's handle, with the fencing token it claims the reply with."""
        return RunWrites(self, mid, uuid.uuid4().hex)

    def submit(self, run: RunWrites) -> None:
        self.queue.put(run)

    def hold(self, run: RunWrites) -> None:
        """Write ``run``'s events at the next tick (or never, if its finish takes them first)."""
        self.held.append(run)
        if self.asleep:  # (a second wake, when two runs race here, is harmless)
            self.asleep = False
            self.queue.put(_WAKE)

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        if self.is_alive():
            self.queue.put(None)
            self.join(timeout=5)

    def run(self) -> None:
        next_tick = last_hold = time.monotonic()
        while True:
            try:
                first = self.queue.get(timeout=self._wait_s(last_hold, next_tick))
            except queue.Empty:  # time for a tick
                first = _WAKE
            self.asleep = False
            stopping = first is None
            batch = [] if stopping or first is _WAKE else [first]
            while len(batch) < MAX_BATCH and not stopping:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:  # stopping: write what came before, then stop
                    stopping = True
                elif item is not _WAKE:
                    batch.append(item)
            now = time.monotonic()
            if now >= next_tick or stopping:
                next_tick = now + TICK_S
                if self.held:
                    last_hold = now
                    while self.held:
                        batch.append(self.held.popleft())
            self.write(batch)
            if stopping:
                return

    def _wait_s(self, last_hold: float, next_tick: float) -> float | None:
        """How long the writer may wait for a run: until its next tick while runs hold events or
        held some lately, else (asleep) until one is submitted or held."""
        now = time.monotonic()
        if self.held or now - last_hold < AWAKE_S:
            return max(0.0, next_tick - now)
        self.asleep = True
        if self.held:  # a hold that came before it could see ``asleep``
            self.asleep = False
            return 0.0
        return None

    def write(self, batch: list[RunWrites]) -> None:
        """Write a batch: each run's pending events in one append, all of them in one round trip.
        (A run may be queued with nothing left: its finish took its events back; or both queued
        and held, taken once.)"""
        taken = [(run, events) for run in dict.fromkeys(batch) if (events := run._take())]
        if not taken:
            return
        try:
            outcomes: list[Any] = self.replies.append_many([(r.mid, r.token, events) for r, events in taken])
        except redis.RedisError as exc:  # may or may not have landed: the run hands the reply off
            outcomes = [exc] * len(taken)
        except Exception as exc:  # never leave a job thread waiting on a write that will not come
            log.exception("event writer failed")
            outcomes = [exc] * len(taken)
        for (run, _events), outcome in zip(taken, outcomes):
            run._written(outcome if isinstance(outcome, BaseException) else FencedOut(run.mid) if outcome == -1
                         else None)
