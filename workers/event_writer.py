"""One writer thread per worker process for every reply's stream events.

A job thread hands its events over and goes back to the provider at once; the writer takes
everything waiting, merges each reply's events into one fenced append, and sends the batch in one
round trip. Under load that is one round trip for many chunks of many replies, instead of one per
chunk with the job thread waiting on it; when idle, a chunk goes out as soon as it is handed
over, so no latency is added. A reply's events keep their order (one queue, one writer).

What a write learned (fenced out, Redis unreachable) is raised in the job thread at its next
``append`` or at ``wait``, which every run calls before it finishes, so a run never finishes a
reply with text still unwritten.
"""
from __future__ import annotations

import logging
import queue
import threading
import uuid
from typing import Any

import redis

from chatapp.replies import FencedOut, Replies

log = logging.getLogger(__name__)

#: events written in one round trip at most (the rest go in the next)
MAX_BATCH = 256


class RunWrites:
    """One job run's handle on the writer: its events go out in order, and ``wait`` blocks until
    they are all written."""

    def __init__(self, writer: "EventWriter", mid: str, token: str) -> None:
        self.writer, self.mid, self.token = writer, mid, token
        self.pending = 0
        self.error: BaseException | None = None
        self._done = threading.Condition()

    def append(self, events: list[tuple[str, dict[str, Any], str]]) -> None:
        """Queue (type, data, text) events; raises what an earlier write of this run hit."""
        self.raise_error()
        with self._done:
            self.pending += 1
        self.writer.submit(self, events)

    def wait(self, timeout: float = 30.0) -> None:
        """Block until every queued event is written; raises what a write hit."""
        with self._done:
            if not self._done.wait_for(lambda: self.pending == 0, timeout):
                raise redis.TimeoutError(f"reply {self.mid}: events not written within {timeout} s")
        self.raise_error()

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def _written(self, count: int, error: BaseException | None) -> None:
        with self._done:
            self.error = self.error or error
            self.pending -= count
            self._done.notify_all()


class EventWriter(threading.Thread):
    def __init__(self, replies: Replies) -> None:
        super().__init__(name="chatapp-event-writer", daemon=True)
        self.replies = replies
        self.queue: queue.SimpleQueue[tuple[RunWrites, list[tuple[str, dict[str, Any], str]]]] = queue.SimpleQueue()

    def for_run(self, mid: str) -> RunWrites:
        """A new job run's handle, with the fencing token it claims the reply with."""
        return RunWrites(self, mid, uuid.uuid4().hex)

    def submit(self, run: RunWrites, events: list[tuple[str, dict[str, Any], str]]) -> None:
        self.queue.put((run, events))

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        if self.is_alive():
            self.queue.put(None)  # type: ignore[arg-type]
            self.join(timeout=5)

    def run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            size = len(first[1])
            while size < MAX_BATCH:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:  # stopping: write what came before, then stop
                    self.queue.put(None)  # type: ignore[arg-type]
                    break
                batch.append(item)
                size += len(item[1])
            self.write(batch)

    def write(self, batch: list[tuple[RunWrites, list[tuple[str, dict[str, Any], str]]]]) -> None:
        """Write a batch: each run's events merged into one append, all of them in one round trip."""
        merged: dict[RunWrites, list[tuple[str, dict[str, Any], str]]] = {}
        handed: dict[RunWrites, int] = {}
        for run, events in batch:
            merged.setdefault(run, []).extend(events)
            handed[run] = handed.get(run, 0) + 1
        runs = list(merged)
        try:
            outcomes: list[Any] = self.replies.append_many([(r.mid, r.token, merged[r]) for r in runs])
        except redis.RedisError as exc:  # may or may not have landed: the run hands the reply off
            outcomes = [exc] * len(runs)
        except Exception as exc:  # never leave a job thread waiting on a write that will not come
            log.exception("event writer failed")
            outcomes = [exc] * len(runs)
        for run, outcome in zip(runs, outcomes):
            error = outcome if isinstance(outcome, BaseException) else FencedOut(run.mid) if outcome == -1 else None
            run._written(handed[run], error)
