"""Worker threads carry their names at the OS level (what top -H and the benchmarks read)."""
from __future__ import annotations

import sys
import threading

import pytest

from workers.thread_names import name_os_thread

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def os_name(thread: threading.Thread) -> str:
    with open(f"/proc/self/task/{thread.native_id}/comm") as f:
        return f.read().strip()


def test_a_thread_names_itself_and_long_names_keep_their_first_15_bytes():
    seen = {}
    ready, done = threading.Event(), threading.Event()

    def run() -> None:
        name_os_thread()
        ready.set()
        done.wait(5)

    thread = threading.Thread(target=run, name="chatapp-finisher-longer")
    thread.start()
    ready.wait(5)
    seen["self"] = os_name(thread)
    name_os_thread(thread, "renamed")  # another thread's name, set from outside
    seen["outside"] = os_name(thread)
    done.set()
    thread.join()
    assert seen == {"self": "chatapp-finishe", "outside": "renamed"}


def test_the_reply_pool_names_its_threads(ext):
    from workers.pool import ThreadPoolWorker

    worker = ThreadPoolWorker(ext.queue.names, connection=ext.clients.raw, concurrency=2, install_signals=False)
    try:
        names = {worker.pool.submit(lambda: os_name(threading.current_thread())).result(5) for _ in range(4)}
    finally:
        worker.pool.shutdown()
    assert names and all(n.startswith("chatapp-reply_") for n in names)


def test_the_main_thread_keeps_the_process_name():
    from workers.thread_names import name_os_threads

    before = os_name(threading.main_thread())
    name_os_threads()
    assert os_name(threading.main_thread()) == before
