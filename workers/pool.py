"""An RQ worker that runs many replies at once in one process.

Generations are I/O-bound (waiting on the provider), so a ``SimpleWorker`` hands each job to a
bounded thread pool; a slot is taken *before* dequeuing, so a dequeued job never waits.
RQ's SIGALRM job timeout only works in the main thread, hence ``TimerDeathPenalty``.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rq import SimpleWorker
from rq.timeouts import TimerDeathPenalty

log = logging.getLogger(__name__)


class ThreadPoolWorker(SimpleWorker):
    death_penalty_class = TimerDeathPenalty

    def __init__(self, *args: Any, concurrency: int = 100, install_signals: bool = True,
                 drain_timeout_s: float = 25.0, **kwargs: Any) -> None:
        kwargs.setdefault("worker_ttl", 20)  # dequeue blocks ~5 s, so Stop is noticed quickly
        super().__init__(*args, **kwargs)
        self.concurrency = concurrency
        self.slots = threading.BoundedSemaphore(concurrency)
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="chatapp-reply")
        self.install_signals = install_signals
        self.drain_timeout_s = drain_timeout_s
        self.in_flight = 0
        self._count_lock = threading.Lock()

    def _install_signal_handlers(self) -> None:
        if self.install_signals:
            super()._install_signal_handlers()

    def stop_soon(self) -> None:
        """Warm stop from any thread (RQ's request_stop is a signal handler for the main thread):
        the loop exits after its current dequeue wait, then drains running replies."""
        self._stop_requested = True

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        while not self.slots.acquire(timeout=1):
            self.heartbeat()
            if self._stop_requested:
                return None
        try:
            while True:
                # RQ's own loop only returns on a job or an idle limit; wait in short idle rounds so
                # a stop asked from another thread (stop_soon) is seen within one round.
                result = super().dequeue_job_and_maintain_ttl(
                    timeout, max_idle_time if timeout is None else (max_idle_time or self.dequeue_timeout))
                if result is not None or timeout is None or max_idle_time or self._stop_requested:
                    break
        except BaseException:
            self.slots.release()
            raise
        if result is None:
            self.slots.release()
        return result

    def execute_job(self, job: Any, queue: Any) -> None:
        execution = self.prepare_execution(job)
        with self._count_lock:
            self.in_flight += 1
        self.pool.submit(self._perform, job, queue, execution)

    def _perform(self, job: Any, queue: Any, execution: Any) -> None:
        try:
            self.perform_job(job, queue, execution)
        except Exception:
            log.exception("job %s crashed outside the job function", job.id)
        finally:
            with self._count_lock:
                self.in_flight -= 1
            self.slots.release()

    def drain(self) -> bool:
        """Wait (up to ``drain_timeout_s``) for running replies; unfinished ones are resumed elsewhere
        once their leases lapse."""
        done = threading.Event()
        threading.Thread(target=lambda: (self.pool.shutdown(wait=True), done.set()), daemon=True).start()
        finished = done.wait(self.drain_timeout_s)
        if not finished:
            log.warning("stopping with %d replies still running; their leases will hand them off", self.in_flight)
        return finished

    def teardown(self) -> None:
        self.drain()
        super().teardown()
