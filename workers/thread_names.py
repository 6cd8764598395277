"""Worker threads named at the OS level too, so ``top -H``, ``py-spy dump`` and
``/proc/<pid>/task/*/comm`` tell the reply threads, the finisher and the event writer apart from
the RQ loop (Python 3.11 names threads only for itself). The main thread keeps the process's name:
``ps``, ``pgrep`` and ``pkill`` read it. Linux keeps 15 bytes of a name; elsewhere this does
nothing."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

log = logging.getLogger(__name__)

try:
    _setname = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).pthread_setname_np
    _setname.argtypes = [ctypes.c_ulong, ctypes.c_char_p]
except (OSError, AttributeError):  # pragma: no cover - not glibc
    _setname = None


def name_os_thread(thread: threading.Thread | None = None, name: str | None = None) -> None:
    """Give ``thread`` (default: the calling one) its Python name, or ``name``, at the OS level."""
    thread = thread or threading.current_thread()
    if _setname is None or thread.ident is None:
        return
    label = (name or thread.name).encode("utf-8", "replace")[:15]
    if _setname(thread.ident, label) != 0:
        log.debug("could not name thread %s at the OS level", thread.name)


def name_os_threads() -> None:
    """Name every running thread of this process but the main one (the process's own name)."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread():
            name_os_thread(thread)
