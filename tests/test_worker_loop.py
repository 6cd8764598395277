"""The thread-pool worker's own loop: what it asks Redis before each job."""
from __future__ import annotations

import types

import pytest
import rq.worker.base

from workers import pool
from workers.pool import SUSPENSION_CHECK_EVERY_S, ThreadPoolWorker


@pytest.fixture()
def loop_worker(ext):
    worker = ThreadPoolWorker(ext.queue.names, connection=ext.clients.raw, concurrency=2, install_signals=False)
    yield worker
    worker.pool.shutdown()


def test_rq_suspend_is_asked_at_most_every_half_second_not_before_every_job(loop_worker, monkeypatch):
    asked = []
    suspended = iter([False, True, False])  # the third check finds it suspended, then resumed
    monkeypatch.setattr(rq.worker.base, "is_suspended", lambda *a: asked.append(1) or next(suspended, False))
    # only these modules' clocks: RQ's wait while suspended, and the worker's own
    monkeypatch.setattr(rq.worker.base, "time", types.SimpleNamespace(sleep=lambda s: None))
    clock = [1000.0]
    monkeypatch.setattr(pool, "time", types.SimpleNamespace(monotonic=lambda: clock[0], sleep=lambda s: None))
    for _ in range(5):  # five jobs within the interval: one question
        loop_worker.check_for_suspension(burst=False)
    assert len(asked) == 1
    clock[0] += SUSPENSION_CHECK_EVERY_S
    loop_worker.check_for_suspension(burst=False)  # asks again, is suspended, waits for resume
    assert len(asked) == 3 and loop_worker.get_state() != "suspended"


def test_a_suspension_check_redis_cannot_answer_is_retried_at_the_next_job(loop_worker, monkeypatch):
    import redis

    calls = []

    def down(*args):
        calls.append(1)
        raise redis.exceptions.ConnectionError("down")

    monkeypatch.setattr(rq.worker.base, "is_suspended", down)
    monkeypatch.setattr(pool, "time", types.SimpleNamespace(monotonic=lambda: 1000.0, sleep=lambda s: None))
    loop_worker.check_for_suspension(burst=False)
    loop_worker.check_for_suspension(burst=False)
    assert len(calls) == 2  # a failed check does not count as one
