"""At-least-once jobs, fenced writes, leases and the reaper (DESIGN.md section 8)."""
from __future__ import annotations

import threading
import time

import pytest

from chatapp.replies import FencedOut
from tests.conftest import InThreadWorker, close_app, make_app
from tests.plugins import recorder
from workers import runtime
from workers.jobs import generate_reply
from workers.keeper import LeaseKeeper
from workers.services import WorkerServices

TEXT = "Echo (assistant): one two three four five"


@pytest.fixture()
def rec_app(app_config):
    recorder.reset()
    application = make_app(app_config, extra_plugins=(recorder,))
    yield application
    close_app(application)


@pytest.fixture()
def rext(rec_app):
    return rec_app.extensions["chatapp"]


@pytest.fixture()
def worker(rext):
    w = InThreadWorker(rext)
    yield w
    w.stop()


def queued_reply(ext, content="one two three four five"):
    user = ext.users.create(f"u{time.monotonic_ns()}")[0]
    accepted = ext.chat.send(user, conversation_id=None, content=content)
    return user, accepted


def events(ext, mid):
    return [(int(i.split("-")[1]), f["t"]) for i, f in ext.redis.xrange(f"{ext.prefix}ev:{mid}")]


def record(ext, mid):
    return ext.redis.hgetall(f"{ext.prefix}msg:{mid}")


after_calls = recorder.after_calls


def test_job_run_twice_concurrently_finishes_once(rext):
    services = WorkerServices(rext).start()
    _, acc = queued_reply(rext)
    outcomes = []
    threads = [threading.Thread(target=lambda: outcomes.append(generate_reply(acc.message_id))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(outcomes) in (["busy", "done"], ["done", "finished"])
    rec = record(rext, acc.message_id)
    assert rec["state"] == "done" and rec["content"] == TEXT
    seqs = [s for s, _ in events(rext, acc.message_id)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(after_calls(acc.message_id)) == 1
    assert generate_reply(acc.message_id) == "finished"  # a late duplicate changes nothing
    assert len(after_calls(acc.message_id)) == 1
    services.stop()
    conv = rext.redis.hgetall(f"{rext.prefix}conv:{acc.conversation_id}")
    assert conv["message_count"] == "2"


def test_orphaned_run_is_fenced_out(rext, worker):
    _, acc = queued_reply(rext)
    mid = acc.message_id
    rext.redis.lpop(f"rq:queue:{rext.config['QUEUE_NAME']}")  # pretend RQ lost the first job
    claim = rext.replies.claim(mid, "orphan-token")
    assert claim.status == "ok" and claim.attempt == 1
    rext.replies.append(mid, "orphan-token", [("delta", {"text": "Echo"}, "Echo")])
    # the orphan stops renewing: within lease + reaper time another run takes over and finishes
    assert rext.relay.wait(mid, 15)["type"] == "done"
    with pytest.raises(FencedOut):
        rext.replies.append(mid, "orphan-token", [("delta", {"text": " again"}, " again")])
    rec = record(rext, mid)
    assert rec["content"] == TEXT and rec["attempt"] == "2"
    texts = "".join(f["d"] for i, f in rext.redis.xrange(f"{rext.prefix}ev:{mid}") if f["t"] == "delta")
    assert texts.count("Echo") == 1


def run_then_die(ext, delivered):
    """A reply whose first run delivered ``delivered`` and then died (RQ lost its job too)."""
    _, acc = queued_reply(ext)
    ext.redis.lpop(f"rq:queue:{ext.config['QUEUE_NAME']}")
    ext.replies.claim(acc.message_id, "dead-worker")
    ext.replies.append(acc.message_id, "dead-worker", [("delta", {"text": delivered}, delivered)])
    return acc.message_id


def test_retry_resumes_without_repeating_delivered_text(rext, worker):
    mid = run_then_die(rext, "Echo (assi")
    final = rext.relay.wait(mid, 15)
    assert final["type"] == "done" and final["finish_reason"] == "stop"
    rec = record(rext, mid)
    assert rec["content"] == TEXT
    deltas = [f for _, f in rext.redis.xrange(f"{rext.prefix}ev:{mid}") if f["t"] == "delta"]
    assert deltas[0]["d"] == '{"text":"Echo (assi"}' and len(after_calls(mid)) == 1


def test_retry_that_diverges_fails_clearly(rext, worker):
    mid = run_then_die(rext, "Something else")
    final = rext.relay.wait(mid, 15)
    assert final["type"] == "error" and final["code"] == "retry_diverged"
    rec = record(rext, mid)
    assert rec["state"] == "failed" and rec["content"] == "Something else"


def test_attempts_exhausted_fails_with_worker_lost(rext):
    rext.config["MAX_ATTEMPTS"] = 1
    rext.replies.max_attempts = 1
    keeper = LeaseKeeper(rext)
    runtime.install(rext, keeper)
    keeper.start()
    try:
        _, acc = queued_reply(rext)
        rext.replies.claim(acc.message_id, "dies")
        final = rext.relay.wait(acc.message_id, 10)
    finally:
        keeper.stop()
    assert final["type"] == "error" and final["code"] == "worker_lost"
    assert record(rext, acc.message_id)["state"] == "failed"


def assert_recovered_by_a_new_worker(rext, mid: str) -> None:
    """A fresh worker's reaper notices the lost job and the reply completes with its full text."""
    w = InThreadWorker(rext)
    try:
        final = rext.relay.wait(mid, 15)  # queue grace (2 s) + reaper
    finally:
        w.stop()
    assert final and final["type"] == "done" and record(rext, mid)["content"] == TEXT


def test_lost_queued_job_is_enqueued_again(rext, worker):
    worker.stop()  # stop consuming so we can lose the job
    _, acc = queued_reply(rext)
    rext.redis.delete(f"rq:queue:{rext.config['QUEUE_NAME']}")
    rext.redis.delete(f"rq:job:{rext.queue.first_job_id(acc.message_id)}")
    assert_recovered_by_a_new_worker(rext, acc.message_id)


def test_job_popped_by_a_worker_that_died_is_enqueued_again(rext, worker):
    """RQ pops from several queues with BLPOP: a worker that dies right after the pop leaves the
    job marked "queued" while no list holds it. The reaper must not take that for alive."""
    worker.stop()
    _, acc = queued_reply(rext)
    popped = rext.clients.raw.blpop([q.key for q in (rext.queue.queue, rext.queue.batch_queue)], 1)
    assert popped and popped[1].decode() == rext.queue.first_job_id(acc.message_id)
    assert rext.queue.job_status(rext.queue.first_job_id(acc.message_id)) == "queued"
    assert_recovered_by_a_new_worker(rext, acc.message_id)


def test_cancel_between_attempts_ends_it(rext):
    _, acc = queued_reply(rext)
    rext.replies.claim(acc.message_id, "t1")
    rext.replies.append(acc.message_id, "t1", [("delta", {"text": "Echo"}, "Echo")])
    rext.redis.hset(f"{rext.prefix}msg:{acc.message_id}", "owner", "")  # as the reaper leaves it
    uid = record(rext, acc.message_id)["user_id"]
    assert rext.replies.cancel(uid, acc.message_id) == "cancelled"
    rec = record(rext, acc.message_id)
    assert rec["state"] == "cancelled" and rec["content"] == "Echo"


@pytest.mark.parametrize("failing", ["after_generation", "after_generation_batch"])
def test_after_generation_hit_by_a_redis_error_runs_again(app_config, monkeypatch, failing):
    """A Redis blip inside after_generation (or the batch hook, where usage and budgets record)
    must not skip the reply's cache, budget and usage: the outbox entry stays unacknowledged and
    is claimed and run again, every hook of it."""
    import redis as redis_lib

    from chatapp.hookspecs import hookimpl
    from tests.conftest import close_app, make_app
    from workers import finisher as finisher_mod

    calls: dict[str, list] = {"after_generation": [], "after_generation_batch": []}

    def called(hook, mids):
        calls[hook].append(mids)
        if hook == failing and len(calls[hook]) == 1:
            raise redis_lib.ConnectionError("blip")

    class Flaky:
        @hookimpl
        def after_generation(self, result):
            called("after_generation", [result.message_id])

        @hookimpl
        def after_generation_batch(self, replies):
            called("after_generation_batch", [r.result.message_id for r in replies])

    application = make_app(app_config, extra_plugins=(Flaky(),))
    ext = application.extensions["chatapp"]
    w = InThreadWorker(ext)
    try:
        user = ext.users.create("flaky")[0]
        acc = ext.chat.send(user, conversation_id=None, content="hello there")
        deadline = time.monotonic() + 10
        while not calls[failing] and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert calls[failing] == [[acc.message_id]]
        assert ext.redis.xpending(f"{ext.prefix}finished", finisher_mod.GROUP)["pending"] == 1
        monkeypatch.setattr(finisher_mod, "CLAIM_IDLE_MS", 0)
        w.services.finisher.claim_abandoned()
        assert calls["after_generation"] == [[acc.message_id]] * 2
        # the batch hook does not see a reply whose after_generation failed, until it runs again
        assert calls["after_generation_batch"] == [[acc.message_id]] * (2 if failing == "after_generation_batch" else 1)
        assert ext.redis.xpending(f"{ext.prefix}finished", finisher_mod.GROUP)["pending"] == 0
    finally:
        w.stop()
        close_app(application)


def test_the_finisher_lingers_only_while_the_worker_runs_replies(ext, monkeypatch):
    """After a read that was not full the finisher waits for more finishes (batching them), but
    not once the process runs no job: the last replies of a burst are not kept waiting."""
    from workers import finisher as finisher_mod

    monkeypatch.setattr(finisher_mod, "LINGER_S", 30.0)
    idle = threading.Event()  # clear: the worker is running replies
    fin = finisher_mod.Finisher(ext, consumer="linger-test", block_ms=200, replies_idle=idle)
    outbox = f"{ext.prefix}finished"

    def stop_queued_reply():
        user, accepted = queued_reply(ext)
        assert ext.replies.cancel(user.id, accepted.message_id) == "cancelled"  # finished: into the outbox

    stop_queued_reply()
    fin.start()
    try:
        deadline = time.monotonic() + 10
        while ext.redis.xlen(outbox):  # the first read takes it, then lingers
            assert time.monotonic() < deadline, "the finisher did not take the first finish"
            time.sleep(0.01)
        stop_queued_reply()
        time.sleep(0.5)
        assert ext.redis.xlen(outbox) == 1  # waiting for more
        idle.set()  # the worker's last job ended
        deadline = time.monotonic() + 5
        while ext.redis.xlen(outbox):
            assert time.monotonic() < deadline, "the finisher kept lingering with no reply running"
            time.sleep(0.01)
    finally:
        fin.stop()
