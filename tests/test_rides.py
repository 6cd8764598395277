"""A reply job's claim and finish riding in RQ's own round trips (workers/rides.py).

The RQ halves of those round trips are RQ's steps rebuilt; the first two tests compare what they
send with what RQ's originals send, so an RQ upgrade that changes those steps fails here.
"""
from __future__ import annotations

import re
import threading
import time

import pytest
from rq.job import Job
from rq.worker import BaseWorker

from chatapp.models import DONE, GenerationResult
from tests.conftest import InThreadWorker
from tests.test_reliability import queued_reply
from tests.round_trips import RoundTrips
from workers import rides
from workers.pool import ThreadPoolWorker
from workers.services import WorkerServices

TEXT = "Echo (assistant): one two three"


def shape(trips: list[list[tuple[str, str]]], job: Job, worker: BaseWorker) -> list[list[tuple[str, str]]]:
    """Round trips with the job's id, the worker's name and execution ids as placeholders."""
    def key(k: str) -> str:
        k = k.replace(job.id, "<job>").replace(worker.name, "<worker>")
        return re.sub(r"[0-9a-f]{32}", "<execution>", k)
    return [[(name, k if name == "EVALSHA" else key(k)) for name, k in trip] for trip in trips]


def load_scripts(ext) -> None:
    """As after the first reply since Redis started: the claim and finish scripts are cached."""
    for script in (ext.replies.scripts.claim, ext.replies.scripts.finish):
        ext.redis.script_load(script.script)


@pytest.fixture()
def services(ext):
    load_scripts(ext)
    running = WorkerServices(ext).start()  # what rides (and the job) find through workers.runtime
    yield running
    running.stop()


@pytest.fixture()
def idle_worker(ext, services):
    worker = ThreadPoolWorker(ext.queue.names, connection=ext.clients.raw, concurrency=2, install_signals=False)
    yield worker
    worker.pool.shutdown()


def queued_reply_job(ext) -> tuple[str, Job]:
    """A reply waiting on the queue: its id and its RQ job."""
    mid = queued_reply(ext, "one two three")[1].message_id
    return mid, Job.fetch(ext.queue.first_job_id(mid), connection=ext.clients.raw)


@pytest.mark.parametrize("one_queue", [True, False])
def test_the_claim_rides_in_the_round_trip_rq_records_a_start_in(ext, idle_worker, monkeypatch, one_queue):
    _mid_a, rq_job = queued_reply_job(ext)
    mid, job = queued_reply_job(ext)
    trips = RoundTrips(monkeypatch, threading.get_ident())
    BaseWorker.prepare_job_execution(idle_worker, rq_job, one_queue)
    rq_trips = shape(trips.take(), rq_job, idle_worker)
    ride = rides.for_job(job)
    rides.record_start(idle_worker, job, ride, one_queue)
    ours = shape(trips.take(), job, idle_worker)

    assert len(rq_trips) == 1 and len(ours) == 1
    assert ours[0] == [*rq_trips[0], ("EVALSHA", ext.replies.scripts.claim.sha)]
    assert ("LREM", "rq:queue:" + rq_job.origin + ":intermediate") in rq_trips[0] or not one_queue
    assert job.get_status(refresh=True) == "started" and job.worker_name == idle_worker.name
    assert ride.claimed is not None and ride.claimed.status == "ok" and ride.claimed.attempt == 1
    assert ride.claimed.source.record["id"] == mid and ride.claim() is ride.claimed
    assert ext.redis.hget(f"{ext.prefix}msg:{mid}", "owner") == ride.writes.token


def test_the_finish_rides_in_the_round_trip_rq_records_an_executions_end_in(ext, idle_worker, monkeypatch):
    _mid_a, rq_job = queued_reply_job(ext)
    mid, job = queued_reply_job(ext)
    ride = rides.for_job(job)
    rides.record_start(idle_worker, job, ride)
    finished = []
    assert ride.finish(GenerationResult(mid, DONE, "hi"), [], finished.append) is None
    assert finished == [] and ride.finishing
    trips = RoundTrips(monkeypatch, threading.get_ident())
    BaseWorker.handle_execution_ended(idle_worker, rq_job, rq_job.origin, 60)
    rq_trips = shape(trips.take(), rq_job, idle_worker)
    rides.record_end(job, 60, ride)
    ours = shape(trips.take(), job, idle_worker)

    assert len(rq_trips) == 1 and len(ours) == 1
    assert ours[0] == [*rq_trips[0], ("EVALSHA", ext.replies.scripts.finish.sha)]
    assert job.ended_at is not None and rq_job.ended_at is not None
    assert finished == [True] and not ride.finishing
    assert ext.redis.hget(f"{ext.prefix}msg:{mid}", "state") == DONE


def test_a_fenced_out_ridden_finish_writes_nothing_and_says_so(ext, idle_worker):
    mid, job = queued_reply_job(ext)
    ride = rides.for_job(job)
    rides.record_start(idle_worker, job, ride)
    finished = []
    ride.writes.token = "not-the-owner"
    ride.finish(GenerationResult(mid, DONE, "hi"), [], finished.append)
    rides.record_end(job, 60, ride)
    assert finished == [False]
    assert ext.redis.hget(f"{ext.prefix}msg:{mid}", "state") == "generating"


def test_a_job_the_worker_runs_makes_no_round_trip_of_its_own_to_claim_or_finish(ext, monkeypatch):
    load_scripts(ext)
    trips = RoundTrips(monkeypatch, None)
    running = InThreadWorker(ext)
    try:
        mids = [queued_reply_job(ext)[0] for _ in range(3)]
        deadline = time.monotonic() + 15
        while any(ext.redis.hget(f"{ext.prefix}msg:{m}", "state") != DONE for m in mids):
            assert time.monotonic() < deadline, "replies did not finish"
            time.sleep(0.02)
    finally:
        running.stop()
    claims = [t for t in trips.trips if ("EVALSHA", ext.replies.scripts.claim.sha) in t]
    finishes = [t for t in trips.trips if ("EVALSHA", ext.replies.scripts.finish.sha) in t]
    assert len(claims) == 3 and len(finishes) == 3
    assert all(any(name == "PERSIST" and key.startswith("rq:job:reply-") for name, key in t) for t in claims)
    assert all(any(name == "HSET" and key.startswith("rq:job:reply-") for name, key in t) for t in finishes)
    for mid in mids:
        assert ext.redis.hget(f"{ext.prefix}msg:{mid}", "content") == TEXT
        job = Job.fetch(ext.queue.first_job_id(mid), connection=ext.clients.raw)
        assert job.get_status() == "finished" and job.return_value() == DONE


def test_after_redis_loses_its_scripts_a_job_claims_and_finishes_on_its_own(ext, worker):
    ext.redis.script_flush()  # what a Redis restart without persistence of scripts does
    mid, _job = queued_reply_job(ext)
    deadline = time.monotonic() + 15
    while ext.redis.hget(f"{ext.prefix}msg:{mid}", "state") != DONE:
        assert time.monotonic() < deadline, "reply did not finish"
        time.sleep(0.02)
    assert ext.redis.hget(f"{ext.prefix}msg:{mid}", "content") == TEXT
    stream = [f["t"] for _i, f in ext.redis.xrange(f"{ext.prefix}ev:{mid}")]
    assert stream.count("done") == 1
