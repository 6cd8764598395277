"""What every worker process runs beside RQ's loop, started and stopped together."""
from __future__ import annotations

from typing import TYPE_CHECKING

from workers import runtime
from workers.finisher import Finisher
from workers.keeper import LeaseKeeper

if TYPE_CHECKING:  # pragma: no cover
    from chatapp.extension import ChatApp


class WorkerServices:
    """The lease keeper (leases, Stop, reaper, liveness) and the finisher (after_generation)."""

    def __init__(self, ext: "ChatApp") -> None:
        self.ext = ext
        self.keeper = LeaseKeeper(ext)
        self.finisher = Finisher(ext, consumer=self.keeper.worker_id, block_ms=int(ext.config["RELAY_BLOCK_MS"]))

    def start(self) -> "WorkerServices":
        """Make this process's job functions use it, and start its threads."""
        runtime.install(self.ext, self.keeper)
        return self.start_threads()

    def start_threads(self) -> "WorkerServices":
        self.keeper.start()
        self.finisher.start()
        return self

    def stop(self) -> None:
        self.finisher.stop()
        self.keeper.stop()
