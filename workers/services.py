"""What every worker process runs beside RQ's loop, started and stopped together."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from chatapp.metrics_redis import MetricsFlusher
from chatapp.retention import RetentionSweeper
from workers import runtime
from workers.event_writer import EventWriter
from workers.finisher import Finisher
from workers.keeper import LeaseKeeper
from workers.thread_names import name_os_threads

if TYPE_CHECKING:  # pragma: no cover
    from chatapp.extension import ChatApp


class WorkerServices:
    """The lease keeper (leases, Stop, reaper, liveness), the event writer (every reply's stream
    writes), the finisher (after_generation), the metrics flusher (worker metrics to Redis, for
    /metrics) and the retention sweeper."""

    def __init__(self, ext: "ChatApp") -> None:
        self.ext = ext
        self.keeper = LeaseKeeper(ext)
        self.event_writer = EventWriter(ext.replies)
        #: set by the process's ThreadPoolWorker while it runs no job: the finisher stops lingering
        self.replies_idle = threading.Event()
        self.finisher = Finisher(ext, consumer=self.keeper.worker_id, block_ms=int(ext.config["RELAY_BLOCK_MS"]),
                                 replies_idle=self.replies_idle)
        self.metrics_flusher = MetricsFlusher(ext.metrics.worker, float(ext.config.get("METRICS_FLUSH_S", 1.0)))
        self.retention = RetentionSweeper(ext)

    def start(self) -> "WorkerServices":
        """Make this process's job functions use it, and start its threads."""
        runtime.install(self.ext, self.keeper, self.event_writer)
        return self.start_threads()

    def start_threads(self) -> "WorkerServices":
        self.keeper.start()
        self.event_writer.start()
        self.finisher.start()
        self.metrics_flusher.start()
        self.retention.start()  # only when CHATAPP_RETENTION_DAYS is set
        name_os_threads()
        return self

    def stop(self) -> None:
        self.retention.stop()
        self.finisher.stop()
        self.keeper.stop()
        self.event_writer.stop()  # after the jobs: they wait for their writes
        self.metrics_flusher.stop()  # last: writes what the others counted
