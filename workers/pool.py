"""An RQ worker that runs many replies at once in one process.

Generations are I/O-bound (waiting on the provider), so a ``SimpleWorker`` hands each job to a
bounded thread pool; a slot is taken *before* dequeuing, so a dequeued job never waits.
RQ's SIGALRM job timeout only works in the main thread, hence ``TimerDeathPenalty``.

The loop that dequeues every job is the one part that runs jobs one after another, so it does
nothing else per job: RQ's record of a job's start is made in the job's thread, and the worker
is marked idle only when no job runs (RQ marks it before every dequeue, a round trip each). A
reply job's claim and finish ride in RQ's own round trips (``workers.rides``).

RQ retries Redis connection errors only inside its dequeue wait; one anywhere else in its loop
(a heartbeat, the suspension check, maintenance, recording a job's start) makes ``work()`` quit,
and the process exits with every later reply left queued. A Redis blip (killed connections, a
restart) must not stop the worker: those steps here log and carry on, and recording a job's start
waits for Redis like RQ's dequeue does.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
from rq import SimpleWorker
from rq.timeouts import TimerDeathPenalty

from workers import rides
from workers.thread_names import name_os_thread

log = logging.getLogger(__name__)

REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
#: a plain heartbeat more often than this is skipped (the worker's key lives for minutes)
HEARTBEAT_EVERY_S = 1.0
#: how often the loop asks whether `rq suspend` was run (RQ asks before every job)
SUSPENSION_CHECK_EVERY_S = 0.5
#: waits between attempts to record a dequeued job's start while Redis is unreachable
PREPARE_RETRY_WAITS_S = (0.1, 0.5, 1.0, 2.0, 4.0)


class ThreadPoolWorker(SimpleWorker):
    death_penalty_class = TimerDeathPenalty

    def __init__(self, *args: Any, concurrency: int = 100, install_signals: bool = True,
                 drain_timeout_s: float = 25.0, idle: threading.Event | None = None, **kwargs: Any) -> None:
        """``idle``: an event this worker sets whenever it runs no job and clears when it starts
        one (the finisher's ``replies_idle``)."""
        kwargs.setdefault("worker_ttl", 20)  # dequeue blocks ~5 s, so Stop is noticed quickly
        self._last_beat = 0.0
        self._last_suspension_check = 0.0
        super().__init__(*args, **kwargs)
        self.concurrency = concurrency
        self.slots = threading.BoundedSemaphore(concurrency)
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="chatapp-reply", initializer=name_os_thread)
        self.install_signals = install_signals
        self.drain_timeout_s = drain_timeout_s
        self.in_flight = 0
        self._count_lock = threading.Lock()
        self.idle = idle or threading.Event()

    def _install_signal_handlers(self) -> None:
        if self.install_signals:
            super()._install_signal_handlers()

    def stop_soon(self) -> None:
        """Warm stop from any thread (RQ's request_stop is a signal handler for the main thread):
        the loop exits after its current dequeue wait, then drains running replies."""
        self._stop_requested = True

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> Any:
        # RQ beats after every dequeue: three round trips per job at our rates. A plain beat
        # (no new timeout, no pipeline) within a second of the last one changes nothing.
        if timeout is None and pipeline is None and time.monotonic() - self._last_beat < HEARTBEAT_EVERY_S:
            return None
        try:
            result = super().heartbeat(timeout, pipeline)
            self._last_beat = time.monotonic()
            return result
        except REDIS_DOWN as exc:
            log.warning("worker heartbeat: Redis unavailable (%s); carrying on", type(exc).__name__)
            return None

    def set_state(self, state: str, pipeline: Any = None) -> None:
        # RQ marks the worker idle before every dequeue, a round trip per job on the loop that
        # dequeues them all. A pool with replies running is busy: it says idle only when none are.
        if state == "idle" and self.in_flight and pipeline is None:
            return
        super().set_state(state, pipeline)

    def check_for_suspension(self, burst: bool) -> None:
        # RQ checks before every job, with a full heartbeat in the same round trip. At hundreds of
        # jobs a second that is a round trip per job on the loop that dequeues them all; `rq
        # suspend` is noticed within SUSPENSION_CHECK_EVERY_S instead.
        if time.monotonic() - self._last_suspension_check < SUSPENSION_CHECK_EVERY_S:
            return
        try:
            super().check_for_suspension(burst)
            self._last_suspension_check = time.monotonic()
        except REDIS_DOWN as exc:
            log.warning("suspension check: Redis unavailable (%s); carrying on", type(exc).__name__)
            time.sleep(0.5)  # the dequeue that follows backs off on its own

    def run_maintenance_tasks(self) -> None:
        try:
            super().run_maintenance_tasks()
        except REDIS_DOWN as exc:
            log.warning("RQ maintenance: Redis unavailable (%s); will retry", type(exc).__name__)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        while not self.slots.acquire(timeout=1):
            self.heartbeat()
            if self._stop_requested:
                return None
        try:
            down = 0
            while True:
                # RQ's own loop only returns on a job or an idle limit; wait in short idle rounds so
                # a stop asked from another thread (stop_soon) is seen within one round.
                try:
                    result = super().dequeue_job_and_maintain_ttl(
                        timeout, max_idle_time if timeout is None else (max_idle_time or self.dequeue_timeout))
                except REDIS_DOWN as exc:  # RQ writes the worker's state before its own retry loop
                    wait = PREPARE_RETRY_WAITS_S[min(down, len(PREPARE_RETRY_WAITS_S) - 1)]
                    down += 1
                    log.warning("dequeue: Redis unavailable (%s); retrying in %.1f s", type(exc).__name__, wait)
                    time.sleep(wait)
                    result = None
                    if not self._stop_requested:
                        continue
                if result is not None or timeout is None or max_idle_time or self._stop_requested:
                    break
        except BaseException:
            self.slots.release()
            raise
        if result is None:
            self.slots.release()
        return result

    def execute_job(self, job: Any, queue: Any) -> None:
        # Everything after the dequeue happens in the job's thread, RQ's record of the job's start
        # included: this loop dequeues every job, so each round trip it makes per job caps the
        # rate for all of them.
        with self._count_lock:
            self.in_flight += 1
            if self.in_flight == 1:
                self.idle.clear()
        self.pool.submit(self._perform, job, queue)

    def _perform(self, job: Any, queue: Any) -> None:
        try:
            execution = self._record_start(job)
            if execution is not None:
                with rides.riding(rides.for_job(job)):
                    self.perform_job(job, queue, execution)
        except Exception:
            log.exception("job %s crashed outside the job function", job.id)
        finally:
            with self._count_lock:
                self.in_flight -= 1
                if not self.in_flight:
                    self.idle.set()
            self.slots.release()

    def _record_start(self, job: Any) -> Any:
        """RQ's ``prepare_execution``, retried while Redis is unreachable: the job is already off
        the queue, so it is kept (as RQ's dequeue does) unless this worker is asked to stop."""
        attempt = 0
        while True:
            try:
                return self.prepare_execution(job)
            except REDIS_DOWN as exc:
                if self._stop_requested:
                    log.error("job %s: stopping before its start could be recorded (%s)", job.id,
                              type(exc).__name__)
                    return None
                wait = PREPARE_RETRY_WAITS_S[min(attempt, len(PREPARE_RETRY_WAITS_S) - 1)]
                attempt += 1
                log.warning("job %s: Redis unavailable (%s); retrying in %.1f s", job.id, type(exc).__name__, wait)
                time.sleep(wait)

    def prepare_job_execution(self, job: Any, remove_from_intermediate_queue: bool = False) -> None:
        # a reply job's claim rides in the round trip that records its start (rides.py)
        ride = rides.current()
        if ride is not None:
            rides.record_start(self, job, ride, remove_from_intermediate_queue)
        else:
            super().prepare_job_execution(job, remove_from_intermediate_queue)

    def handle_execution_ended(self, job: Any, queue: Any, heartbeat_ttl: int) -> None:
        # a reply job's finish rides in the round trip that records the end of its execution
        ride = rides.current()
        if ride is not None and ride.finishing:
            rides.record_end(job, heartbeat_ttl, ride)
        else:
            super().handle_execution_ended(job, queue, heartbeat_ttl)

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
