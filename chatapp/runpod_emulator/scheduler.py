"""A single timer thread that runs simulation events at their due time.

One thread and one heap carry every job and worker of the emulator, so hundreds of concurrent
streaming jobs cost a few events per second each instead of a thread each.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)


class Handle:
    """A scheduled event; ``cancel()`` it to make it a no-op."""

    __slots__ = ("when", "fn", "args", "cancelled", "_owner")

    def __init__(self, when: float, fn: Callable[..., Any], args: tuple,
                 owner: "Scheduler") -> None:
        self.when = when
        self.fn: Callable[..., Any] | None = fn
        self.args = args
        self.cancelled = False
        self._owner = owner

    def cancel(self) -> None:
        """Make the event a no-op and drop its references (a job's 24 h ttl timer must not
        keep the job's output alive after the job is gone)."""
        if not self.cancelled:
            self.cancelled = True
            self.fn, self.args = None, ()
            self._owner._note_cancelled()


class Scheduler:
    """Runs ``fn(when, *args)`` at monotonic time `when`, holding `state_lock`.

    The callback gets the event's *scheduled* time, not the moment it actually ran: the
    simulated timeline (and so the billing) stays exact even when the thread is a little late.
    Lock order is always state lock, then the scheduler's own lock, never the reverse.
    """

    def __init__(self, state_lock: threading.Lock, name: str = "runpod-emulator-scheduler"):
        self._state_lock = state_lock
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Handle]] = []
        self._counter = itertools.count()
        self._stopped = False
        self._cancelled = 0  # cancelled entries still in the heap
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> Handle:
        """Schedule `fn` for monotonic time `when`; callable with or without the state lock."""
        handle = Handle(when, fn, args, self)
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._counter), handle))
            if self._heap[0][2] is handle:
                self._cond.notify()
        return handle

    def _note_cancelled(self) -> None:
        # Compact when cancelled entries dominate, so far-future dead timers cannot pile up.
        with self._cond:
            self._cancelled += 1
            if self._cancelled > 1024 and self._cancelled * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if not entry[2].cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0
                self._cond.notify()

    def stop(self) -> None:
        """Stop the thread; pending events never run."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _next_due(self) -> Handle | None:
        with self._cond:
            while not self._stopped:
                if not self._heap:
                    self._cond.wait()
                    continue
                when, _, handle = self._heap[0]
                if handle.cancelled:
                    heapq.heappop(self._heap)
                    self._cancelled = max(0, self._cancelled - 1)
                    continue
                delay = when - time.monotonic()
                if delay <= 0:
                    heapq.heappop(self._heap)
                    return handle
                self._cond.wait(delay)
            return None

    def _run(self) -> None:
        while True:
            handle = self._next_due()
            if handle is None:
                return
            with self._state_lock:
                # Checked again under the state lock: a cancel may have raced the pop.
                fn, args = handle.fn, handle.args
                if handle.cancelled or fn is None:
                    continue
                handle.cancelled = True  # done: a later cancel() is then a no-op
                handle.fn, handle.args = None, ()
                try:
                    fn(handle.when, *args)
                except Exception:  # one bad event must not kill the simulation
                    log.exception("emulator event %s failed", getattr(fn, "__name__", "?"))
