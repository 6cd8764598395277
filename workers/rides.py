"""A reply job's claim and finish, sent in the round trips RQ makes for every job anyway.

RQ records a job's start in one round trip from the job's thread (``prepare_job_execution``) and
the end of its execution in another (the job heartbeat of ``handle_execution_ended``). A reply's
fenced claim and fenced finish were a round trip each of their own, and for a short reply those
two were most of what a reply job cost beyond a bare RQ job (docs/benchmarks.md, session 7).
So when ``ThreadPoolWorker`` runs a reply job, the claim goes in the pipeline that records the
job's start and the finish in the one that records its end: the job *rides* on RQ's round trips.

The job function finds its ride through a thread-local the worker sets for the job's thread.
Run anywhere else (a plain ``rq worker``, a test calling it), it claims and finishes itself.
When Redis has lost its script cache, the ridden claim is not run and the job claims on its own;
the finish is sent again through the registered script, which loads it.

The RQ halves here are RQ's own steps, rebuilt so that our scripts can join their pipelines;
``tests/test_rides.py`` checks that they send what RQ's originals send, so an RQ upgrade that
changes them fails a test instead of leaving RQ's records incomplete.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

import redis
from rq import Queue
from rq.utils import now

from chatapp.models import GenerationResult
from chatapp.replies import Claim, Event, Replies
from workers import runtime
from workers.event_writer import RunWrites

if TYPE_CHECKING:  # pragma: no cover
    from rq.job import Job
    from rq.worker import BaseWorker

_local = threading.local()


@dataclass
class Ride:
    """One run of a reply job: its writes (and fencing token), and how it claims and finishes
    through ``replies``. ``on_rq``: its claim was sent with RQ's record of the job's start (the
    answer waits in ``claimed``) and its finish waits for RQ's record of the end; else each is a
    round trip."""
    mid: str
    writes: RunWrites
    replies: Replies
    on_rq: bool = False
    claimed: Claim | None = None
    finish_args: list[Any] | None = None
    on_finished: Callable[[bool], None] | None = None

    @property
    def token(self) -> str:
        return self.writes.token

    def claim(self) -> Claim:
        """The run's claim: the answer that came with RQ's start record, else one of its own."""
        return self.claimed or self.replies.claim(self.mid, self.token)

    def finish(self, result: GenerationResult, events: list[Event], then: Callable[[bool], None]) -> bool | None:
        """End the reply with ``result`` after ``events``; ``then(finished)`` is told whether this
        run did (False: it was fenced out). On RQ, that happens after the job function returns,
        and this returns None; else now, and this returns it too."""
        if self.on_rq:
            self.finish_args, self.on_finished = self.replies.finish_args(self.mid, self.token, result, events), then
            return None
        finished = self.replies.finish(self.mid, self.token, result, events)
        then(finished)
        return finished

    @property
    def finishing(self) -> bool:
        """A finish waits to be sent with RQ's record of the job's end."""
        return self.finish_args is not None


def rides_on_rq(function: Callable[[str], str]) -> Callable[[str], str]:
    """Mark a job function as one that takes a reply's id and claims and finishes it through
    ``current`` when it has a ride (``workers.jobs.generate_reply`` does)."""
    function.rides_on_rq = True  # type: ignore[attr-defined]
    return function


def for_job(job: "Job") -> Ride | None:
    """A ride on RQ for a run of a reply job (with the run's own token); None for any other job."""
    try:
        function = job.func
    except Exception:  # not importable: RQ's perform_job fails the job and says why
        return None
    if len(job.args) != 1 or not getattr(function, "rides_on_rq", False):
        return None
    return _new_ride(job.args[0], on_rq=True)


def for_run(mid: str) -> Ride:
    """What a reply job function runs with: the ride the worker made for it, else (run by a plain
    RQ worker, or called directly) a new run that claims and finishes on its own."""
    ride = current(mid)
    return ride if ride is not None else _new_ride(mid)


def _new_ride(mid: str, on_rq: bool = False) -> Ride:
    """A new run of reply ``mid`` on this process's writer and replies."""
    ext, _keeper, writer = runtime.get()
    return Ride(mid, writer.for_run(mid), ext.replies, on_rq=on_rq)


def current(mid: str | None = None) -> Ride | None:
    """The ride of the job this thread is running (for reply ``mid``, when given), if any."""
    ride: Ride | None = getattr(_local, "ride", None)
    return ride if ride is not None and (mid is None or ride.mid == mid) else None


@contextmanager
def riding(ride: Ride | None) -> Iterator[None]:
    """Make ``ride`` this thread's for the duration of the job."""
    _local.ride = ride
    try:
        yield
    finally:
        _local.ride = None


def record_start(worker: "BaseWorker", job: "Job", ride: Ride, remove_from_intermediate_queue: bool = False) -> None:
    """``BaseWorker.prepare_job_execution`` (run in the job's thread), with the reply's claim in
    the same transaction. The claim's answer waits in ``ride.claimed`` (left None if Redis could
    not run the script: the job then claims on its own)."""
    replies = ride.replies
    with replies.redis.pipeline() as pipe:
        heartbeat_ttl = worker.get_heartbeat_ttl(job)
        worker.heartbeat(heartbeat_ttl, pipeline=pipe)
        job.heartbeat(now(), heartbeat_ttl, pipeline=pipe)
        job.prepare_for_execution(worker.name, pipeline=pipe)
        pipe.persist(job.key)
        if remove_from_intermediate_queue:
            pipe.lrem(Queue(job.origin, connection=worker.connection).intermediate_queue_key, 1, job.id)
        # EVALSHA directly: a Script in a pipeline costs a SCRIPT EXISTS round trip each time
        pipe.evalsha(replies.scripts.claim.sha, 0, *replies.claim_args(ride.mid, ride.token))
        *rq_answers, claimed = pipe.execute(raise_on_error=False)
    _raise_first(rq_answers)
    if not isinstance(claimed, Exception):
        ride.claimed = replies.read_claim(claimed)
    worker.procline(f"Processing {job.func_name} from {job.origin} since {time.time()}")


def record_end(job: "Job", heartbeat_ttl: int, ride: Ride) -> None:
    """``BaseWorker.handle_execution_ended``, with the finish the job left in the same round trip."""
    replies = ride.replies
    args, then = ride.finish_args, ride.on_finished
    ride.finish_args = ride.on_finished = None  # sent once, even if RQ calls this again after an error
    assert args is not None
    job.ended_at = now()
    with replies.redis.pipeline(transaction=False) as pipe:
        job.heartbeat(now(), heartbeat_ttl, pipeline=pipe)
        pipe.evalsha(replies.scripts.finish.sha, 0, *args)
        rq_answer, finished = pipe.execute(raise_on_error=False)
    if isinstance(finished, redis.exceptions.NoScriptError):
        finished = replies.scripts.finish(args=args)  # the registered script loads itself
    elif isinstance(finished, Exception):
        raise finished
    if then is not None:
        then(finished != -1)
    _raise_first([rq_answer])


def _raise_first(answers: list[Any]) -> None:
    for answer in answers:
        if isinstance(answer, Exception):
            raise answer
