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

    __slots__ = ("when", "fn", "args", "cancelled")

    def __init__(self, when: float, fn: Callable[..., Any], args: tuple) -> None:
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


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
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> Handle:
        """Schedule `fn` for monotonic time `when`; callable with or without the state lock."""
        handle = Handle(when, fn, args)
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._counter), handle))
            if self._heap[0][2] is handle:
                self._cond.notify()
        return handle

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
                if handle.cancelled:
                    continue
                try:
                    handle.fn(handle.when, *handle.args)
                except Exception:  # one bad event must not kill the simulation
                    log.exception("emulator event %s failed", getattr(handle.fn, "__name__", "?"))
