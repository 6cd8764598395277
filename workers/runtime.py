"""The worker process's chatapp state, found by job functions (which take only ids, as RQ wants)."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from chatapp.extension import ChatApp
    from workers.keeper import LeaseKeeper

_lock = threading.Lock()
_ext: "ChatApp | None" = None
_keeper: "LeaseKeeper | None" = None


def install(ext: "ChatApp", keeper: "LeaseKeeper") -> None:
    global _ext, _keeper
    with _lock:
        _ext, _keeper = ext, keeper


def get() -> "tuple[ChatApp, LeaseKeeper]":
    """The installed state; a plain ``rq worker`` process builds it from the environment once."""
    global _ext, _keeper
    with _lock:
        if _ext is None:
            from chatapp.app import create_app
            from workers.services import WorkerServices

            ext: Any = create_app({"PROCESS_ROLE": "worker"}).extensions["chatapp"]
            services = WorkerServices(ext).start_threads()  # install() would retake our lock
            _ext, _keeper = ext, services.keeper
        assert _keeper is not None
        return _ext, _keeper
