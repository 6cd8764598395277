"""The emulator's in-memory state: endpoints, jobs, waiting, webhooks. Thread-safe.

One lock guards everything; each job has its own Condition on that lock, so a long-polling
``/stream`` wakes only when *its* job changes (200 waiters do not all wake on every token).
"""
from __future__ import annotations

import ipaddress
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import requests

from chatapp.runpod_emulator.config import EmulatorConfig
from chatapp.runpod_emulator.faults import Fault, parse_fault, take_http_fault
from chatapp.runpod_emulator.jobs import Job, new_job_id
from chatapp.runpod_emulator.pool import EndpointPool
from chatapp.runpod_emulator.ratelimit import RateLimiter
from chatapp.runpod_emulator.scheduler import Scheduler
from chatapp.runpod_emulator.submission import Submission

log = logging.getLogger(__name__)


class NotRetryable(ValueError):
    """/retry on a job that is neither FAILED nor TIMED_OUT."""


def is_loopback_url(url: str) -> bool:
    """Webhooks go only to this machine: the emulator must never call out to the internet."""
    try:
        host = urlsplit(url).hostname or ""
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Emulator:
    """All endpoints of one emulator. Every public method is safe to call from any thread."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.lock = threading.Lock()
        self.scheduler = Scheduler(self.lock)
        self.limiter = RateLimiter()
        self._pools: dict[str, EndpointPool] = {}
        self._webhooks = ThreadPoolExecutor(max_workers=4,
                                            thread_name_prefix="runpod-emulator-webhook")
        self._closed = False
        self._closing = threading.Event()  # interrupts webhook retry back-off on close

    @property
    def closed(self) -> bool:
        return self._closed

    # -- lookup ------------------------------------------------------------------------------

    def pool(self, endpoint_id: str) -> EndpointPool | None:
        """The endpoint's pool (created on first use), or None for an unknown endpoint."""
        with self.lock:
            return self._pool_locked(endpoint_id)

    def _pool_locked(self, endpoint_id: str) -> EndpointPool | None:
        pool = self._pools.get(endpoint_id)
        if pool is None and self.config.serves(endpoint_id):
            pool = EndpointPool(endpoint_id, self.config.for_endpoint(endpoint_id),
                                self.scheduler, self._job_finished)
            self._pools[endpoint_id] = pool
        return pool

    def job(self, endpoint_id: str, job_id: str) -> Job | None:
        """A live job, or None when unknown or expired."""
        with self.lock:
            pool = self._pool_locked(endpoint_id)
            return pool.jobs.get(job_id) if pool else None

    # -- job operations ----------------------------------------------------------------------

    def submit(self, endpoint_id: str, sub: Submission, sync: bool = False) -> Job:
        """Create and queue a job from a validated submission."""
        with self.lock:
            pool = self._pool_locked(endpoint_id)
            if pool is None:
                raise KeyError(endpoint_id)
            job = Job(new_job_id(sync), endpoint_id, sub.input, threading.Condition(self.lock),
                      sync=sync, webhook=sub.webhook, execution_timeout_s=sub.execution_timeout_s,
                      ttl_s=sub.ttl_s, low_priority=sub.low_priority, faults=sub.faults)
            pool.submit(job, time.monotonic())
            log.debug("endpoint %s: job %s queued", endpoint_id, job.id)
            return job

    def queue_full(self, endpoint_id: str) -> bool:
        with self.lock:
            pool = self._pool_locked(endpoint_id)
            return bool(pool and pool.queue_full())

    def status(self, job: Job) -> dict[str, Any]:
        """The job's /status envelope."""
        with self.lock:
            return job.envelope()

    def wait_done(self, job: Job, timeout_s: float) -> dict[str, Any]:
        """Block until the job ends (or `timeout_s`); returns its envelope."""
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while not job.terminal and not job.deleted and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                job.cond.wait(remaining)
            return job.envelope()

    def read_stream(self, job: Job, wait_s: float = 0.0) -> dict[str, Any] | None:
        """The /stream body: new items (consumed) and the status; None if the job expired.

        With `wait_s`, block until there is at least one new item, the job ends, or time is up.
        """
        deadline = time.monotonic() + wait_s
        with self.lock:
            while not (job.has_unread or job.terminal or job.deleted or self._closed):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                job.cond.wait(remaining)
            if job.deleted:
                return None
            body: dict[str, Any] = {"status": job.status, "stream": job.take_stream()}
            if job.terminal and job.error is not None:
                body["error"] = job.error
            return body

    def read_items_after(self, job: Job, pos: int, wait_s: float) -> tuple[list[Any], str]:
        """Items from index `pos` on, without consuming them (the OpenAI relay's own cursor)."""
        deadline = time.monotonic() + wait_s
        with self.lock:
            while len(job.items) <= pos and not (job.terminal or job.deleted or self._closed):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                job.cond.wait(remaining)
            return list(job.items[pos:]), job.status

    def cancel(self, job: Job) -> dict[str, Any]:
        """Cancel a queued or running job; returns ``{"id", "status"}``."""
        with self.lock:
            pool = self._pools[job.endpoint_id]
            pool.cancel(job, time.monotonic())
            return {"id": job.id, "status": job.status}

    def retry(self, job: Job) -> dict[str, Any]:
        """Requeue a FAILED or TIMED_OUT job under the same id."""
        with self.lock:
            if not self._pools[job.endpoint_id].retry(job, time.monotonic()):
                raise NotRetryable(f"job is {job.status}; only FAILED or TIMED_OUT jobs retry")
            # Like /run, RunPod answers IN_QUEUE even if a warm worker took the job already.
            return {"id": job.id, "status": "IN_QUEUE"}

    def purge_queue(self, endpoint_id: str) -> dict[str, Any]:
        with self.lock:
            pool = self._pool_locked(endpoint_id)
            removed = pool.purge(time.monotonic()) if pool else 0
            return {"removed": removed, "status": "completed"}

    def health(self, endpoint_id: str) -> dict[str, Any]:
        with self.lock:
            pool = self._pool_locked(endpoint_id)
            return pool.health() if pool else {}

    def billing(self, endpoint_id: str, settle: bool = False) -> dict[str, Any]:
        """The endpoint's bill (emulator-only): see billing.Ledger.report."""
        with self.lock:
            pool = self._pool_locked(endpoint_id)
            if pool is None:
                return {}
            return {"endpoint_id": endpoint_id,
                    **pool.ledger.report(time.monotonic(), settle=settle)}

    # -- faults and limits -------------------------------------------------------------------

    def arm_fault(self, endpoint_id: str, fault: str | dict | Fault) -> None:
        """Arm an endpoint-wide fault at runtime (for tests and scripts)."""
        parsed = fault if isinstance(fault, Fault) else parse_fault(fault)
        with self.lock:
            pool = self._pool_locked(endpoint_id)
            if pool is not None:
                pool.faults.append(parsed)

    def take_http_fault(self, endpoint_id: str, job_id: str | None, route: str) -> Fault | None:
        """Consume the HTTP fault (if any) that hits this call: the job's first, then the endpoint's."""
        with self.lock:
            pool = self._pool_locked(endpoint_id)
            if pool is None:
                return None
            job = pool.jobs.get(job_id) if job_id else None
            return (take_http_fault(job.faults, route) if job else None) \
                or take_http_fault(pool.faults, route)

    def check_rate(self, endpoint_id: str, route: str) -> float | None:
        """None if the call is within the endpoint's limits, else seconds until it would be."""
        pool = self.pool(endpoint_id)
        return self.limiter.hit(endpoint_id, route, pool.cfg.rate_limits) if pool else None

    # -- webhooks and shutdown ---------------------------------------------------------------

    def _job_finished(self, job: Job) -> None:
        """Called by the pool (lock held) when a job ends: send its webhook off-thread."""
        log.debug("endpoint %s: job %s %s", job.endpoint_id, job.id, job.status)
        if not job.webhook or self._closed:
            return
        if not is_loopback_url(job.webhook):
            log.warning("job %s: webhook to a non-loopback address skipped", job.id)
            return
        cfg = self._pools[job.endpoint_id].cfg
        self._webhooks.submit(self._post_webhook, job.webhook, job.envelope(), cfg)

    def _post_webhook(self, url: str, body: dict[str, Any], cfg: EmulatorConfig) -> None:
        for attempt in range(cfg.webhook_retries + 1):
            if self._closed:
                return
            try:
                resp = requests.post(url, json=body, timeout=cfg.webhook_timeout_s)
                if resp.status_code == 200:
                    return
                log.info("webhook for %s answered %s", body["id"], resp.status_code)
            except requests.RequestException as exc:
                log.info("webhook for %s failed: %s", body["id"], exc.__class__.__name__)
            if attempt < cfg.webhook_retries:
                self._closing.wait(cfg.webhook_retry_delay_s)

    def close(self) -> None:
        """Stop the simulation and wake every waiter."""
        self._closing.set()
        with self.lock:
            self._closed = True
            for pool in self._pools.values():
                for job in pool.jobs.values():
                    job.cond.notify_all()
        self.scheduler.stop()
        self._webhooks.shutdown(wait=False, cancel_futures=True)
