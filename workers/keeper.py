"""Leases, Stop and the reaper, for one worker process.

Every ``LEASE_RENEW_S`` one script call renews the lease of each reply this process runs, reads
their Stop flags and marks the process alive. A reply whose lease lapses (its worker died) is
found by any live worker's reaper within a second and re-run (reattaching to the provider job
when it can) or failed; a reply still waiting in the queue is checked against RQ and re-enqueued
if its job is gone.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis

from chatapp.models import GenerationContext, Provider

if TYPE_CHECKING:  # pragma: no cover
    from chatapp.extension import ChatApp

log = logging.getLogger(__name__)

ALIVE_JOB_STATES = {"queued", "deferred", "scheduled"}


@dataclass
class Running:
    token: str
    context: GenerationContext
    provider: Provider
    cancel_sent: bool = False


class LeaseKeeper(threading.Thread):
    def __init__(self, ext: "ChatApp", worker_id: str | None = None) -> None:
        super().__init__(name="chatapp-lease-keeper", daemon=True)
        self.ext = ext
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.renew_s = float(ext.config["LEASE_RENEW_S"])
        self.worker_ttl_ms = int(max(5.0, 3 * self.renew_s) * 1000)
        self.running: dict[str, Running] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def track(self, mid: str, token: str, context: GenerationContext, provider: Provider) -> None:
        with self.lock:
            self.running[mid] = Running(token, context, provider)

    def untrack(self, mid: str, token: str | None = None) -> None:
        """Forget a run; with ``token``, only if it is still the one tracked (a fenced run that
        ends after its retry started in this process must not untrack the retry)."""
        with self.lock:
            running = self.running.get(mid)
            if running is not None and (token is None or running.token == token):
                del self.running[mid]

    def active(self) -> int:
        with self.lock:
            return len(self.running)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=self.renew_s + 2)
        try:
            self.ext.redis.zrem(self.ext.prefix + "workers", self.worker_id)
        except redis.RedisError:
            pass

    def run(self) -> None:
        next_reap = 0.0
        while not self.stopping.is_set():
            try:
                self.renew()
                if time.monotonic() >= next_reap:
                    self.reap()
                    next_reap = time.monotonic() + 1.0
            except redis.RedisError as exc:
                log.warning("lease keeper: Redis unavailable (%s)", type(exc).__name__)
            except Exception:
                log.exception("lease keeper failed; continuing")
            self.stopping.wait(self.renew_s)

    def renew(self) -> None:
        with self.lock:
            held = {mid: r.token for mid, r in self.running.items()}
        outcome = self.ext.replies.renew(self.worker_id, held, self.worker_ttl_ms)
        for mid, status in outcome.items():
            if status in ("cancel", "lost"):
                self.stop_generation(mid, reason=status, token=held[mid])

    def stop_generation(self, mid: str, reason: str, token: str | None = None) -> None:
        """Set the reply's cancelled flag and tell the provider once (off this thread: it may be slow).
        With ``token``, only that run: a fenced run must not stop the retry that replaced it."""
        with self.lock:
            running = self.running.get(mid)
            if running is None or running.cancel_sent or (token is not None and running.token != token):
                return
            running.cancel_sent = True
        log.info("stopping generation %s (%s)", mid, reason)
        running.context.cancelled.set()
        threading.Thread(target=self._provider_cancel, args=(running,), daemon=True).start()

    @staticmethod
    def _provider_cancel(running: Running) -> None:
        try:
            running.provider.cancel(running.context)
        except Exception:
            log.exception("provider %s failed to cancel", running.provider.id)

    def reap(self) -> None:
        replies, queue = self.ext.replies, self.ext.queue
        for mid in replies.due():
            outcome = replies.reap(mid)
            if outcome == "requeue":
                log.warning("reply %s lost its worker; enqueueing it again", mid)
                self.enqueue_again(mid)
            elif outcome == "check_queue":
                job_id = self.ext.redis.hget(f"{self.ext.prefix}msg:{mid}", "job_id")
                status = queue.job_status(job_id)
                if status not in ALIVE_JOB_STATES or (status == "queued" and not queue.waiting(job_id)):
                    # gone, failed, started but never claimed, or popped by a worker that died:
                    # a second run is harmless (the claim is fenced), a lost reply is not
                    log.warning("reply %s has no live job (%s: %s); enqueueing it again", mid, job_id, status)
                    self.enqueue_again(mid)
            elif outcome in ("failed", "cancelled"):
                log.warning("reply %s ended by the reaper: %s", mid, outcome)

    def enqueue_again(self, mid: str) -> None:
        job_id = self.ext.queue.retry_job_id(mid)
        key = f"{self.ext.prefix}msg:{mid}"
        self.ext.redis.hset(key, "job_id", job_id)
        # a batch item goes back to the batch queue, behind interactive replies
        self.ext.queue.enqueue(mid, job_id, batch=bool(self.ext.redis.hget(key, "batch_id")))
