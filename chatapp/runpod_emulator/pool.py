"""One endpoint's queue and simulated worker pool.

Jobs wait IN_QUEUE until a worker is free. When queued jobs outnumber booting workers, new workers
boot (each taking ``cold_start_s``) up to ``max_workers``. A worker that finds the queue empty
stays warm for ``idle_timeout_s`` and then stops; every session goes to the billing ledger.
Everything here runs with the emulator lock held: from HTTP handlers (via the Emulator) or from
scheduler events, which pass their scheduled time as `now`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from chatapp.runpod_emulator import plan as planner
from chatapp.runpod_emulator.billing import JobCharge, Ledger, WorkerSession
from chatapp.runpod_emulator.config import EmulatorConfig
from chatapp.runpod_emulator.faults import Fault, parse_faults, take_job_fault
from chatapp.runpod_emulator.jobs import (
    CANCELLED, COMPLETED, FAILED, IN_PROGRESS, IN_QUEUE, TIMED_OUT, Job, new_worker_id,
)
from chatapp.runpod_emulator.scheduler import Handle, Scheduler

log = logging.getLogger(__name__)
INITIALIZING, IDLE, RUNNING = "initializing", "idle", "running"


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


@dataclass(eq=False)  # identity semantics: `job in queue` must not compare fields
class Worker:
    """A simulated worker. ``fresh``: has run no job yet, so its first job carries the cold start."""

    id: str
    session: WorkerSession
    state: str = INITIALIZING
    job: Job | None = None
    reserved_for: Job | None = None
    fresh: bool = True
    handle: Handle | None = None  # boot-complete or idle-stop event


class EndpointPool:
    """Queue, workers, jobs, counters and ledger of one endpoint."""

    def __init__(self, endpoint_id: str, cfg: EmulatorConfig, scheduler: Scheduler,
                 on_finish: Callable[[Job], None]) -> None:
        self.id = endpoint_id
        self.cfg = cfg
        self.scheduler = scheduler
        self.on_finish = on_finish
        self.jobs: dict[str, Job] = {}
        self.queue: list[Job] = []
        self.workers: dict[str, Worker] = {}
        self.ledger = Ledger(cfg.price_per_s)
        self.faults: list[Fault] = parse_faults(cfg.faults)
        self.counts = {"completed": 0, "failed": 0, "retried": 0}

    # -- queue -------------------------------------------------------------------------------

    def queue_full(self) -> bool:
        """RunPod's 429 rule for /run: over 50 queued jobs and over max_workers * 500."""
        depth = len(self.queue)
        return depth > 50 and depth > self.cfg.max_workers * self.cfg.max_queue_per_worker

    def submit(self, job: Job, now: float) -> None:
        """Queue a new job and let the pool react (assign or scale up)."""
        self.jobs[job.id] = job
        job.submitted_at = now
        job.expire_handle = self.scheduler.call_at(now + job.ttl_s, self._expire, job)
        self._enqueue(job, now)

    def _enqueue(self, job: Job, now: float) -> None:
        job.queued_at = now
        job.fault = take_job_fault(job.faults) or take_job_fault(self.faults)
        self.queue.append(job)
        self.dispatch(now)

    def _unqueue(self, job: Job) -> None:
        if job in self.queue:
            self.queue.remove(job)
        if job.reserved_worker and job.reserved_worker in self.workers:
            self.workers[job.reserved_worker].reserved_for = None
        job.reserved_worker = None

    def dispatch(self, now: float) -> None:
        """Reserve cold-start workers, hand queued jobs to idle workers, boot more if needed."""
        for job in self.queue:
            if job.fault and job.fault.name == "cold_start" and job.reserved_worker is None \
                    and len(self.workers) < self.cfg.max_workers:
                self._boot(now, float(job.fault.params["seconds"]), reserved_for=job)
        for worker in [w for w in self.workers.values() if w.state == IDLE]:
            job = self._next_job_for(worker)
            if job is None:
                break
            self._start(worker, job, now)
        demand = sum(1 for j in self.queue if not j.low_priority and j.reserved_worker is None)
        supply = sum(1 for w in self.workers.values()
                     if w.state == INITIALIZING and w.reserved_for is None)
        while demand > supply and len(self.workers) < self.cfg.max_workers:
            self._boot(now, self.cfg.cold_start_s)
            supply += 1

    def _next_job_for(self, worker: Worker) -> Job | None:
        if worker.reserved_for is not None and worker.reserved_for in self.queue:
            return worker.reserved_for
        return next((j for j in self.queue if j.reserved_worker is None), None)

    # -- workers -----------------------------------------------------------------------------

    def _boot(self, now: float, cold_start_s: float, reserved_for: Job | None = None) -> None:
        worker_id = new_worker_id()
        worker = Worker(worker_id, self.ledger.open_session(worker_id, now, cold_start_s))
        if reserved_for is not None:
            worker.reserved_for = reserved_for
            reserved_for.reserved_worker = worker_id
        self.workers[worker_id] = worker
        worker.handle = self.scheduler.call_at(now + cold_start_s, self._booted, worker)
        log.info("endpoint %s: worker %s booting (cold start %.2fs)", self.id, worker_id,
                 cold_start_s)

    def _booted(self, now: float, worker: Worker) -> None:
        worker.handle = None
        self._assign_or_idle(worker, now)

    def _assign_or_idle(self, worker: Worker, now: float) -> None:
        job = self._next_job_for(worker)
        if job is not None:
            self._start(worker, job, now)
            return
        worker.state, worker.reserved_for = IDLE, None
        worker.session.projected_stop = now + self.cfg.idle_timeout_s
        worker.handle = self.scheduler.call_at(now + self.cfg.idle_timeout_s, self._idle_stop,
                                               worker)

    def _idle_stop(self, now: float, worker: Worker) -> None:
        self._stop_worker(worker, now, "idle_timeout")

    def _stop_worker(self, worker: Worker, now: float, reason: str) -> None:
        if worker.handle is not None:
            worker.handle.cancel()
        worker.session.stop, worker.session.stop_reason = now, reason
        worker.session.projected_stop = None
        self.workers.pop(worker.id, None)
        log.info("endpoint %s: worker %s stopped (%s)", self.id, worker.id, reason)

    # -- execution ---------------------------------------------------------------------------

    def _start(self, worker: Worker, job: Job, now: float) -> None:
        if worker.handle is not None:
            worker.handle.cancel()  # the idle-stop timer
            worker.handle = None
        self._unqueue(job)
        worker.reserved_for = None
        worker.session.projected_stop = None
        worker.session.job_ids.append(job.id)
        worker.state, worker.job = RUNNING, job
        job.status, job.started_at, job.worker_id = IN_PROGRESS, now, worker.id
        job.delay_ms = _ms(now - job.queued_at)
        job.cold_start_s = worker.session.cold_start_s if worker.fresh else 0.0
        worker.fresh = False
        job.attempts += 1
        job.plan = planner.build_plan(job.id, job.input, self.cfg, worker.id, job.fault)
        job.plan_pos = 0
        job.handles.append(self.scheduler.call_at(now + job.execution_timeout_s,
                                                  self._execution_timeout, job))
        self._schedule_step(job)
        job.cond.notify_all()

    def _schedule_step(self, job: Job) -> None:
        if job.plan_pos < len(job.plan):
            step = job.plan[job.plan_pos]
            job.handles.append(self.scheduler.call_at(job.started_at + step.at, self._step, job))

    def _step(self, now: float, job: Job) -> None:
        step = job.plan[job.plan_pos]
        job.plan_pos += 1
        if step.kind == planner.YIELD:
            job.items.append(step.value)
            job.cond.notify_all()
            self._schedule_step(job)
        elif step.kind == planner.COMPLETE:
            self.finish(job, COMPLETED, now, no_output=step.value == "no_output")
        elif step.kind == planner.FAIL:
            self.finish(job, FAILED, now, error=step.value)
        else:
            self.finish(job, TIMED_OUT, now)

    def _execution_timeout(self, now: float, job: Job) -> None:
        self.finish(job, TIMED_OUT, now)

    def _release(self, job: Job, now: float, status: str) -> Worker | None:
        """Take the job off the queue or its worker and charge its execution; returns the worker."""
        job.cancel_events()
        if job.status == IN_QUEUE:
            self._unqueue(job)
            return None
        worker = self.workers.get(job.worker_id or "")
        if worker is None or worker.job is not job or job.started_at is None:
            return None
        exec_s = max(0.0, now - job.started_at)
        job.execution_ms = _ms(exec_s)
        worker.session.busy_s += exec_s
        self.ledger.add_charge(JobCharge(job.id, worker.id, status, job.delay_ms or 0,
                                         job.execution_ms, job.cold_start_s,
                                         started_s=job.started_at - worker.session.start,
                                         ended_s=now - worker.session.start))
        worker.job = None
        return worker

    def finish(self, job: Job, status: str, now: float, error: str | None = None,
               no_output: bool = False) -> None:
        """End a job (any terminal status), free its worker and schedule the result's expiry."""
        if job.terminal:
            return
        worker = self._release(job, now, status)
        job.status, job.error, job.ended_at, job.output_missing = status, error, now, no_output
        if status == COMPLETED:
            self.counts["completed"] += 1
        elif status in (FAILED, TIMED_OUT):
            self.counts["failed"] += 1
        retention = self.cfg.sync_retention_s if job.sync else self.cfg.retention_s
        self._schedule_expiry(job, min(now + retention, job.submitted_at + job.ttl_s))
        job.cond.notify_all()
        self.on_finish(job)
        if worker is not None:
            if status == TIMED_OUT:  # RunPod stops a worker whose job hit its execution timeout
                self._stop_worker(worker, now, "execution_timeout")
                self.dispatch(now)
            else:
                self._assign_or_idle(worker, now)

    def _schedule_expiry(self, job: Job, when: float) -> None:
        if job.expire_handle is not None:
            job.expire_handle.cancel()
        job.expires_at = when
        job.expire_handle = self.scheduler.call_at(when, self._expire, job)

    def _expire(self, now: float, job: Job) -> None:
        """Retention or ttl ran out: the job's data is deleted, whatever its state."""
        if not job.terminal:
            worker = self._release(job, now, "EXPIRED")
            if worker is not None:
                self._assign_or_idle(worker, now)
        job.deleted = True
        self.jobs.pop(job.id, None)
        job.cond.notify_all()

    # -- operations --------------------------------------------------------------------------

    def cancel(self, job: Job, now: float) -> None:
        """Cancel a queued or running job; a finished job is left as it is."""
        self.finish(job, CANCELLED, now)

    def retry(self, job: Job, now: float) -> bool:
        """Requeue a FAILED or TIMED_OUT job under the same id; False for any other status."""
        if job.status not in (FAILED, TIMED_OUT):
            return False
        job.reset_for_retry(now)
        self.counts["retried"] += 1
        self._schedule_expiry(job, job.submitted_at + job.ttl_s)
        job.expires_at = None
        self._enqueue(job, now)
        job.cond.notify_all()
        return True

    def purge(self, now: float) -> int:
        """Remove every queued job (they end CANCELLED); running jobs go on."""
        purged = list(self.queue)
        for job in purged:
            self.finish(job, CANCELLED, now)
        return len(purged)

    def health(self) -> dict:
        """RunPod's /health body for this endpoint."""
        states = [w.state for w in self.workers.values()]
        return {
            "jobs": {
                "completed": self.counts["completed"],
                "failed": self.counts["failed"],
                "inProgress": sum(1 for w in self.workers.values() if w.job is not None),
                "inQueue": len(self.queue),
                "retried": self.counts["retried"],
            },
            "workers": {
                "idle": states.count(IDLE),
                "initializing": states.count(INITIALIZING),
                "ready": states.count(IDLE),
                "running": states.count(RUNNING),
                "throttled": 0,
                "unhealthy": 0,
            },
        }
