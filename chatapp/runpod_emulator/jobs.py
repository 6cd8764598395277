"""A job of the emulated queue: its state, its stream buffer and the envelopes RunPod returns."""
from __future__ import annotations

import secrets
import string
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from chatapp.runpod_emulator.faults import Fault
from chatapp.runpod_emulator.scheduler import Handle

IN_QUEUE = "IN_QUEUE"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
TIMED_OUT = "TIMED_OUT"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})


def new_job_id(sync: bool = False) -> str:
    """A RunPod-shaped job id: ``<uuid>-u1``, or ``sync-<uuid>-u1`` for /runsync."""
    return f"{'sync-' if sync else ''}{uuid.uuid4()}-u1"


def new_worker_id() -> str:
    """A RunPod-shaped worker id (14 lowercase letters and digits)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(14))


@dataclass(eq=False)  # identity semantics: `job in queue` must not compare fields
class Job:
    """One job. Mutated only with the emulator lock held; `cond` shares that lock.

    Times are ``time.monotonic()`` seconds. ``items`` holds every yield (the stream), ``cursor``
    how many of them ``/stream`` has already handed out (reading consumes).
    """

    id: str
    endpoint_id: str
    input: Any
    cond: threading.Condition
    sync: bool = False
    webhook: str | None = None
    execution_timeout_s: float = 600.0
    ttl_s: float = 86400.0
    low_priority: bool = False
    faults: list[Fault] = field(default_factory=list)  # per-request faults (input.emulator_fault)
    status: str = IN_QUEUE
    submitted_at: float = 0.0
    queued_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    worker_id: str | None = None
    delay_ms: int | None = None
    execution_ms: int | None = None
    cold_start_s: float = 0.0  # this job's share of its worker's cold start
    items: list[Any] = field(default_factory=list)
    cursor: int = 0
    output_missing: bool = False  # completed_without_output fault
    error: str | None = None
    attempts: int = 0
    deleted: bool = False  # expired (retention or ttl): the id is now a 404
    reserved_worker: str | None = None  # a cold_start fault boots a worker just for this job
    expires_at: float | None = None
    fault: Fault | None = None  # the job fault of the current attempt
    plan: list[Any] = field(default_factory=list)  # plan.Step list of the current execution
    plan_pos: int = 0
    handles: list[Handle] = field(default_factory=list)  # pending generation / timeout events
    expire_handle: Handle | None = None  # ttl while running, retention once ended

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def cancel_events(self) -> None:
        """Drop every pending generation and timeout event of this job."""
        for handle in self.handles:
            handle.cancel()
        self.handles.clear()

    def reset_for_retry(self, now: float) -> None:
        """Put the job back in the queue under the same id, with no output or error."""
        self.cancel_events()
        self.status = IN_QUEUE
        self.queued_at = now
        self.started_at = self.ended_at = self.expires_at = None
        self.worker_id = self.error = None
        self.delay_ms = self.execution_ms = None
        self.cold_start_s = 0.0
        self.items, self.cursor, self.output_missing = [], 0, False
        self.plan, self.plan_pos = [], 0

    def envelope(self) -> dict[str, Any]:
        """The /status body: id, status, and what is known so far (times, worker, output, error)."""
        body: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.delay_ms is not None:
            body["delayTime"] = self.delay_ms
        if self.execution_ms is not None:
            body["executionTime"] = self.execution_ms
        if self.worker_id is not None:
            body["workerId"] = self.worker_id
        if self.terminal and self.items and not self.output_missing:
            body["output"] = list(self.items)
        if self.error is not None:
            body["error"] = self.error
        return body

    def take_stream(self) -> list[dict[str, Any]]:
        """Items produced since the previous call, each ``{"output": <yield>}``; consumes them."""
        fresh = self.items[self.cursor:]
        self.cursor = len(self.items)
        return [{"output": item} for item in fresh]

    @property
    def has_unread(self) -> bool:
        return self.cursor < len(self.items)
