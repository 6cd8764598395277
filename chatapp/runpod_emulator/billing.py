"""The billing ledger, the way RunPod charges Flex workers.

A worker is billed per second, rounded up, from its start to its stop: cold start + execution +
idle timeout, at the endpoint's price per second. Money is kept in integer micro-dollars.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

# Floating-point noise (0.5 + 1.2 + 5.0 = 6.700000000000001) must not cost an extra second.
_EPSILON = 1e-6


@dataclass
class WorkerSession:
    """One worker's life from boot to stop."""

    worker_id: str
    start: float
    cold_start_s: float
    stop: float | None = None
    stop_reason: str | None = None
    projected_stop: float | None = None  # when an idle worker will stop if no job comes
    busy_s: float = 0.0
    job_ids: list[str] = field(default_factory=list)


@dataclass
class JobCharge:
    """One execution of a job on a worker."""

    job_id: str
    worker_id: str
    status: str
    delay_ms: int
    execution_ms: int
    cold_start_s: float
    #: seconds since its worker's start when the job started and ended: lets a client
    #: attribute the worker's idle seconds to the job that kept it warm
    started_s: float = 0.0
    ended_s: float = 0.0


def billed_seconds(duration_s: float) -> int:
    """Seconds billed for a session of `duration_s`: rounded up, at least 1."""
    return max(1, math.ceil(duration_s - _EPSILON))


def micro_usd(seconds: int, price_per_s: float) -> int:
    """Integer micro-dollars for `seconds` at `price_per_s` USD (decimal, so 7 * 0.00019 is 1330)."""
    value = Decimal(seconds) * Decimal(str(price_per_s)) * 1_000_000
    return int(value.to_integral_value(rounding=ROUND_HALF_UP))


class Ledger:
    """Worker sessions and job charges of one endpoint. Used with the emulator lock held.

    A long-running emulator must not grow without bound: past `max_rows`, the oldest closed
    sessions and job rows are folded into ``archived`` totals (the bill's total stays exact).
    """

    def __init__(self, price_per_s: float, max_rows: int = 10_000) -> None:
        self.price_per_s = price_per_s
        self.max_rows = max_rows
        self.sessions: list[WorkerSession] = []
        self.charges: list[JobCharge] = []
        self.archived = {"sessions": 0, "jobs": 0, "billed_seconds": 0, "micro_usd": 0}
        # Monotonic and wall clocks sampled together, to print monotonic times as ISO dates.
        self._mono0, self._wall0 = time.monotonic(), time.time()

    def open_session(self, worker_id: str, start: float, cold_start_s: float) -> WorkerSession:
        session = WorkerSession(worker_id, start, cold_start_s)
        self.sessions.append(session)
        if len(self.sessions) > self.max_rows:
            self._archive_sessions()
        return session

    def add_charge(self, charge: JobCharge) -> None:
        self.charges.append(charge)
        if len(self.charges) > self.max_rows:
            keep = self.max_rows // 2
            self.archived["jobs"] += len(self.charges) - keep
            self.charges = self.charges[-keep:]

    def _archive_sessions(self) -> None:
        excess = len(self.sessions) - self.max_rows // 2
        kept: list[WorkerSession] = []
        for s in self.sessions:
            if excess > 0 and s.stop is not None:
                seconds = billed_seconds(s.stop - s.start)
                self.archived["sessions"] += 1
                self.archived["billed_seconds"] += seconds
                self.archived["micro_usd"] += micro_usd(seconds, self.price_per_s)
                excess -= 1
            else:
                kept.append(s)
        self.sessions = kept

    def _iso(self, mono: float) -> str:
        wall = self._wall0 + (mono - self._mono0)
        return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="milliseconds")

    def _session_row(self, s: WorkerSession, now: float, settle: bool) -> dict[str, Any]:
        stop, final = s.stop, s.stop is not None
        if stop is None and settle and s.projected_stop is not None:
            stop, final = s.projected_stop, True  # idle worker: bill the full idle timeout now
        end = stop if stop is not None else now
        duration = max(0.0, end - s.start)
        seconds = billed_seconds(duration)
        cold = min(s.cold_start_s, duration)
        return {
            "worker_id": s.worker_id,
            "start": self._iso(s.start),
            "stop": self._iso(stop) if stop is not None else None,
            "final": final,
            "stop_reason": s.stop_reason or ("projected_idle_timeout" if final else None),
            "duration_s": round(duration, 6),
            "billed_seconds": seconds,
            "cold_start_s": round(cold, 6),
            "execution_s": round(s.busy_s, 6),
            "idle_s": round(max(0.0, duration - cold - s.busy_s), 6),
            "micro_usd": micro_usd(seconds, self.price_per_s),
            "usd": micro_usd(seconds, self.price_per_s) / 1_000_000,
            "job_ids": list(s.job_ids),
        }

    def report(self, now: float, settle: bool = False) -> dict[str, Any]:
        """The bill so far. ``settle`` bills idle workers as if their idle timeout had run out;
        workers still booting or running are billed up to `now` and marked ``final: false``."""
        workers = [self._session_row(s, now, settle) for s in self.sessions]
        total = sum(w["micro_usd"] for w in workers) + self.archived["micro_usd"]
        return {
            "price_per_s": self.price_per_s,
            "currency": "USD",
            "total_micro_usd": total,
            "total_usd": total / 1_000_000,
            "billed_seconds": sum(w["billed_seconds"] for w in workers)
            + self.archived["billed_seconds"],
            "complete": all(w["final"] for w in workers),
            "archived": dict(self.archived),
            "workers": workers,
            "jobs": [
                {"job_id": c.job_id, "worker_id": c.worker_id, "status": c.status,
                 "delayTime": c.delay_ms, "executionTime": c.execution_ms,
                 "cold_start_s": round(c.cold_start_s, 6), "started_s": round(c.started_s, 6),
                 "ended_s": round(c.ended_s, 6)}
                for c in self.charges
            ],
        }
