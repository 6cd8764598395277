"""``python -m workers``: an RQ worker on queue ``chat`` running many replies at once."""
from __future__ import annotations

import argparse
import logging

from chatapp.app import create_app
from chatapp.embedded import start_bundled_emulator
from workers.pool import ThreadPoolWorker
from workers.services import WorkerServices


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=None, help="replies at once (CHATAPP_WORKER_CONCURRENCY)")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    args = parser.parse_args(argv)
    emulator_settings, stop_emulator, provider_text = start_bundled_emulator()
    app = create_app({"PROCESS_ROLE": "worker", **emulator_settings})
    ext = app.extensions["chatapp"]
    services = WorkerServices(ext).start()
    concurrency = args.concurrency or int(app.config["WORKER_CONCURRENCY"])
    worker = ThreadPoolWorker(ext.queue.names, connection=ext.clients.raw, concurrency=concurrency,
                              drain_timeout_s=float(app.config["WORKER_DRAIN_S"]), idle=services.replies_idle)
    logging.getLogger(__name__).info("worker %s: %d replies at once on queues %s",
                                     services.keeper.worker_id, concurrency, ", ".join(ext.queue.names))
    logging.getLogger(__name__).info("provider: %s (default: %s)", provider_text, ext.catalog.default_provider)
    try:
        worker.work(burst=args.burst, logging_level="INFO")
    finally:
        services.stop()
        stop_emulator()


if __name__ == "__main__":
    main()
