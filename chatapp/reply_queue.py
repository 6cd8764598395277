"""RQ binding: one job per reply on queue ``chat``; the job takes only the reply's id.

Batch replies (``chatapp.batch``) go to a second queue, ``<name>-batch``. Every worker listens
to both, main queue first: RQ pops the queues in the order given, so a worker takes a batch job
only when no interactive reply is waiting, and a big batch cannot starve chat.
"""
from __future__ import annotations

import secrets

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job

JOB_FUNCTION = "workers.jobs.generate_reply"


class ReplyQueue:
    def __init__(self, raw_client: redis.Redis, name: str, job_timeout_s: int) -> None:
        self.connection = raw_client
        self.queue = Queue(name, connection=raw_client)
        self.batch_queue = Queue(f"{name}-batch", connection=raw_client)
        self.job_timeout_s = job_timeout_s

    @property
    def names(self) -> list[str]:
        """The queues a worker listens to, in priority order (interactive first, then batch)."""
        return [self.queue.name, self.batch_queue.name]

    @staticmethod
    def first_job_id(mid: str) -> str:
        return f"reply-{mid}"

    @staticmethod
    def retry_job_id(mid: str) -> str:
        return f"reply-{mid}-{secrets.token_hex(4)}"

    def enqueue(self, mid: str, job_id: str, *, batch: bool = False) -> None:
        """Queue the job for reply ``mid``; ``batch`` puts it on the low-priority batch queue."""
        with self.connection.pipeline() as pipe:  # one round trip (RQ's own enqueue takes two)
            (self.batch_queue if batch else self.queue).enqueue_call(
                JOB_FUNCTION, args=(mid,), job_id=job_id, timeout=self.job_timeout_s,
                result_ttl=600, failure_ttl=24 * 3600, description=f"reply {mid}", pipeline=pipe,
            )
            pipe.execute()

    def job_status(self, job_id: str | None) -> str | None:
        """RQ's status for a job ('queued', 'started', 'finished', ...), None when it is gone."""
        if not job_id:
            return None
        try:
            return Job.fetch(job_id, connection=self.connection).get_status(refresh=False)
        except NoSuchJobError:
            return None

    def waiting(self, job_id: str) -> bool:
        """Whether a queue list still holds the job. RQ pops from several queues with BLPOP, which
        is not crash-safe: a worker that dies (or loses its connection) right after the pop leaves
        the job marked ``queued`` with no list holding it. LPOS is a scan, but the reaper only
        asks for replies that have waited a whole queue grace."""
        return any(self.connection.lpos(q.key, job_id) is not None for q in (self.queue, self.batch_queue))

    def depth(self, *, batch: bool = False) -> int:
        """Jobs waiting on the main queue (or on the batch queue)."""
        return (self.batch_queue if batch else self.queue).count
