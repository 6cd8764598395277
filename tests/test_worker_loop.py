"""The thread-pool worker's own loop: what it asks Redis before each job."""
from __future__ import annotations

import threading
import time
import types

import pytest
import redis
import rq.worker.base
from rq import Queue
from rq.job import Job

from tests.round_trips import RoundTrips
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
    calls = []

    def down(*args):
        calls.append(1)
        raise redis.exceptions.ConnectionError("down")

    monkeypatch.setattr(rq.worker.base, "is_suspended", down)
    monkeypatch.setattr(pool, "time", types.SimpleNamespace(monotonic=lambda: 1000.0, sleep=lambda s: None))
    loop_worker.check_for_suspension(burst=False)
    loop_worker.check_for_suspension(burst=False)
    assert len(calls) == 2  # a failed check does not count as one


def noop() -> str:
    return "ran"


def queued_noop(ext):
    queue = Queue(ext.queue.names[0], connection=ext.clients.raw)
    return Job.fetch(queue.enqueue(noop).id, connection=ext.clients.raw), queue


def test_the_loop_hands_a_dequeued_job_over_without_a_round_trip_of_its_own(ext, loop_worker, monkeypatch):
    job, queue = queued_noop(ext)
    trips = RoundTrips(monkeypatch, threading.get_ident())
    loop_worker.slots.acquire()  # what the dequeue does before it takes a job
    loop_worker.execute_job(job, queue)
    assert trips.take() == []  # RQ's record of the start is made in the job's thread
    deadline = time.monotonic() + 10
    while job.get_status(refresh=True) != "finished":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert job.return_value() == "ran" and loop_worker.in_flight == 0


GATE = threading.Event()


def wait_for_gate() -> str:
    GATE.wait(10)
    return "ran"


def test_the_pool_signals_when_it_runs_no_job(ext, loop_worker):
    """``idle`` (the finisher's cue to stop lingering) is set exactly when no job runs."""
    assert not loop_worker.idle.is_set()  # not known yet: the finisher lingers as it always did
    GATE.clear()
    queue = Queue(ext.queue.names[0], connection=ext.clients.raw)
    for func in (noop, wait_for_gate):
        loop_worker.slots.acquire()
        loop_worker.execute_job(Job.fetch(queue.enqueue(func).id, connection=ext.clients.raw), queue)
    deadline = time.monotonic() + 10
    while loop_worker.in_flight != 1:  # the no-op ends; the gated job runs on
        assert time.monotonic() < deadline, "the no-op job did not end"
        time.sleep(0.01)
    assert not loop_worker.idle.is_set()  # one job done, one running
    GATE.set()
    assert loop_worker.idle.wait(10) and loop_worker.in_flight == 0


def test_the_pool_says_idle_only_when_no_job_runs(ext, loop_worker):
    state = lambda: ext.clients.raw.hget(loop_worker.key, "state")  # noqa: E731
    loop_worker.set_state("busy")
    loop_worker.in_flight = 1
    loop_worker.set_state("idle")  # RQ's before every dequeue: the pool is still busy
    assert state() == b"busy"
    loop_worker.in_flight = 0
    loop_worker.set_state("idle")
    assert state() == b"idle"


def test_a_job_whose_start_redis_cannot_record_is_kept_until_it_can(ext, loop_worker, monkeypatch):
    job, _queue = queued_noop(ext)
    record, failures = loop_worker.prepare_execution, []

    def flaky(job):
        if len(failures) < 2:
            failures.append(1)
            raise redis.exceptions.ConnectionError("down")
        return record(job)

    monkeypatch.setattr(loop_worker, "prepare_execution", flaky)
    monkeypatch.setattr(pool, "time", types.SimpleNamespace(sleep=lambda s: None))
    assert loop_worker._record_start(job) is not None and len(failures) == 2
    failures.clear()
    loop_worker.stop_soon()  # asked to stop: the job is let go (the reaper enqueues its reply again)
    assert loop_worker._record_start(job) is None
