"""The worker process's chatapp state, found by job functions (which take only ids, as RQ wants)."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from workers.event_writer import EventWriter

if TYPE_CHECKING:  # pragma: no cover
    from chatapp.extension import ChatApp
    from workers.keeper import LeaseKeeper

_lock = threading.Lock()
_ext: "ChatApp | None" = None
_keeper: "LeaseKeeper | None" = None
_writer: EventWriter | None = None


def install(ext: "ChatApp", keeper: "LeaseKeeper", writer: EventWriter | None = None) -> None:
    """Make job functions in this process use ``ext``; without ``writer``, one is started."""
    global _ext, _keeper, _writer
    if writer is None:
        writer = EventWriter(ext.replies)
        writer.start()
    with _lock:
        _ext, _keeper, _writer = ext, keeper, writer


def get() -> "tuple[ChatApp, LeaseKeeper, EventWriter]":
    """The installed state; a plain ``rq worker`` process builds it from the environment once."""
    global _ext, _keeper, _writer
    with _lock:
        if _ext is None:
            from chatapp.app import create_app
            from workers.services import WorkerServices

            ext: Any = create_app({"PROCESS_ROLE": "worker"}).extensions["chatapp"]
            services = WorkerServices(ext).start_threads()  # install() would retake our lock
            _ext, _keeper, _writer = ext, services.keeper, services.event_writer
        assert _keeper is not None and _writer is not None
        return _ext, _keeper, _writer
