"""The worker's event writer (one per process, batching every reply's appends) and the claim that
reads a reply's request source in the same step, against a real redis-server."""
from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
import redis

from chatapp.chat import request_for_reply
from chatapp.replies import FencedOut, Replies
from tests.conftest import free_port
from workers import event_writer
from workers.event_writer import EventWriter


def queued(ext, content="one two three"):
    user = ext.users.create(f"u{time.monotonic_ns()}")[0]
    accepted = ext.chat.send(user, conversation_id=None, content=content)
    ext.redis.lpop(f"rq:queue:{ext.config['QUEUE_NAME']}")  # these tests run the reply by hand
    return user, accepted.message_id


def partial(ext, mid):
    """The reply's text as stored so far."""
    return ext.redis.get(f"{ext.prefix}msg:{mid}:partial")


def deltas(ext, mid):
    return [(int(i.split("-")[1]), f["d"]) for i, f in ext.redis.xrange(f"{ext.prefix}ev:{mid}") if f["t"] == "delta"]


def counted_writes(monkeypatch) -> list[list[int]]:
    """Per round trip the writer sends, the number of events of each of its appends."""
    sent: list[list[int]] = []
    original = Replies.append_many

    def counting(self, writes):
        sent.append([len(events) for _mid, _token, events in writes])
        return original(self, writes)

    monkeypatch.setattr(Replies, "append_many", counting)
    return sent


@pytest.fixture()
def writer(ext):
    w = EventWriter(ext.replies)
    w.start()
    yield w
    w.stop()


def test_many_runs_interleaved_keep_each_replys_order_and_text(ext, writer):
    runs = []
    for _ in range(8):
        _, mid = queued(ext)
        run = writer.for_run(mid)
        assert ext.replies.claim(mid, run.token).status == "ok"
        runs.append(run)

    def stream(run):
        for i in range(50):
            run.append([("delta", {"text": f"{i} "}, f"{i} ")])
        run.wait()

    threads = [threading.Thread(target=stream, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    expected = "".join(f"{i} " for i in range(50))
    for run in runs:
        got = deltas(ext, run.mid)
        seqs = [s for s, _ in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == 50  # in order, each once
        assert "".join(d.split('"text":"')[1].split('"')[0] for _, d in got) == expected
        assert partial(ext, run.mid) == expected


def test_a_batch_merges_a_replys_events_into_one_append(ext, writer, monkeypatch):
    _, mid = queued(ext)
    run = writer.for_run(mid)
    ext.replies.claim(mid, run.token)
    calls = counted_writes(monkeypatch)
    # hand over many events while the writer is busy with the first: they go out together
    gate = threading.Event()
    real_write = writer.write
    monkeypatch.setattr(writer, "write", lambda batch: (gate.wait(5), real_write(batch)))
    for i in range(20):
        run.append([("delta", {"text": str(i)}, str(i))])
    gate.set()
    run.wait()
    assert sum(sum(c) for c in calls) == 20
    assert len(calls) <= 2 and all(len(c) == 1 for c in calls)  # one append per reply per batch
    assert partial(ext, mid) == "".join(str(i) for i in range(20))


def test_a_fenced_out_run_learns_it_at_its_next_append_or_wait(ext, writer):
    _, mid = queued(ext)
    run = writer.for_run(mid)
    ext.replies.claim(mid, run.token)
    ext.redis.hset(f"{ext.prefix}msg:{mid}", "owner", "someone-else")  # another run took over
    run.append([("delta", {"text": "lost"}, "lost")])
    with pytest.raises(FencedOut):
        run.wait()
    with pytest.raises(FencedOut):
        run.append([("delta", {"text": "again"}, "again")])
    assert deltas(ext, mid) == []


def test_a_redis_error_reaches_the_run_and_the_writer_carries_on(ext):
    dead = redis.Redis(host="127.0.0.1", port=free_port(), decode_responses=True, socket_connect_timeout=0.5)
    broken = EventWriter(Replies(dead, ext.replies.scripts, ext.prefix, ext.config))
    broken.start()
    try:
        run = broken.for_run("m_nothing")
        run.append([("delta", {"text": "x"}, "x")])
        with pytest.raises(redis.ConnectionError):
            run.wait()
        assert broken.is_alive()
    finally:
        broken.stop()


def test_stop_writes_what_was_queued_first(ext):
    w = EventWriter(ext.replies)
    _, mid = queued(ext)
    run = w.for_run(mid)
    ext.replies.claim(mid, run.token)
    for i in range(5):
        run.append([("delta", {"text": str(i)}, str(i))])  # queued before the thread even runs
    w.start()
    w.stop()
    assert not w.is_alive()
    assert partial(ext, mid) == "01234"


def test_the_writer_reloads_a_script_redis_forgot(ext, writer):
    _, mid = queued(ext)
    run = writer.for_run(mid)
    ext.replies.claim(mid, run.token)
    ext.redis.script_flush()  # as after a Redis restart without persistence of scripts
    try:
        run.append([("delta", {"text": "after flush"}, "after flush")])
        run.wait()
        assert partial(ext, mid) == "after flush"
    finally:
        ext.replies.scripts.__init__(ext.redis, int(ext.config["FIREHOSE_MAXLEN"]))  # reload for the rest


def test_a_runs_last_events_go_out_with_its_finish(ext):
    w = EventWriter(ext.replies)  # not started: nothing is taken from the run behind its back
    _, mid = queued(ext)
    run = w.for_run(mid)
    ext.replies.claim(mid, run.token)
    before = ext.redis.xlen(f"{ext.prefix}ev:{mid}")
    run.append([("status", {"state": "generating"}, ""), ("delta", {"text": "all "}, "all ")])
    run.append([("delta", {"text": "at once"}, "at once")])
    rest = run.take_rest()
    assert [e[0] for e in rest] == ["status", "delta", "delta"]
    w.write([run])  # the writer finds the run queued with nothing left to write
    assert ext.redis.xlen(f"{ext.prefix}ev:{mid}") == before
    assert ext.replies.finish(mid, run.token, _done(mid), rest)
    types = [f["t"] for _i, f in ext.redis.xrange(f"{ext.prefix}ev:{mid}")][before:]
    assert types == ["status", "delta", "delta", "done"]
    assert ext.redis.hget(f"{ext.prefix}msg:{mid}", "content") == "all at once"


def test_take_rest_waits_for_the_events_the_writer_holds_and_keeps_their_order(ext, writer, monkeypatch):
    _, mid = queued(ext)
    run = writer.for_run(mid)
    ext.replies.claim(mid, run.token)
    taken, gate = threading.Event(), threading.Event()
    real_append_many = ext.replies.append_many  # the writer has taken the run's events by then
    monkeypatch.setattr(ext.replies, "append_many", lambda writes: (taken.set(), gate.wait(5),
                                                                     real_append_many(writes))[-1])
    run.append([("delta", {"text": "first "}, "first ")])
    assert taken.wait(5)
    run.append([("delta", {"text": "second"}, "second")])  # waits in the run while the first is written
    rest: list = []
    taker = threading.Thread(target=lambda: rest.extend(run.take_rest()))
    taker.start()
    time.sleep(0.2)
    assert taker.is_alive()  # still waiting for the writer
    gate.set()
    taker.join(5)
    # "second" went out either with the writer's next batch or comes back to go with the finish:
    # each event exactly once, in order
    written = partial(ext, mid)
    assert (written, [e[2] for e in rest]) in (("first ", ["second"]), ("first second", []))
    assert ext.replies.finish(mid, run.token, _done(mid), rest)
    assert ext.redis.hget(f"{ext.prefix}msg:{mid}", "content") == "first second"


def test_a_fenced_out_finish_writes_none_of_its_events(ext):
    _, mid = queued(ext)
    ext.replies.claim(mid, "mine")
    ext.redis.hset(f"{ext.prefix}msg:{mid}", "owner", "someone-else")
    assert not ext.replies.finish(mid, "mine", _done(mid), [("delta", {"text": "late"}, "late")])
    assert deltas(ext, mid) == []


def test_claim_brings_the_request_source_and_renders_like_a_fresh_read(ext):
    user, mid = queued(ext, "first question")
    token = "t1"
    ext.replies.claim(mid, token)
    ext.replies.append(mid, token, [("delta", {"text": "first answer"}, "first answer")])
    ext.replies.finish(mid, token, _done(mid))
    cid = ext.redis.hget(f"{ext.prefix}msg:{mid}", "conversation_id")
    second = ext.chat.send(user, conversation_id=cid, content="second question").message_id
    claim = ext.replies.claim(second, "t2")
    assert claim.status == "ok" and claim.source is not None
    assert claim.source.user_name == user.name and claim.source.conversation["id"] == cid
    assert claim.source.record["id"] == second and claim.source.record["state"] == "generating"
    assert [t.role for t in claim.source.history] == ["user", "assistant", "user"]
    from_claim, _ = request_for_reply(ext, second, claim.source)
    fresh, _ = request_for_reply(ext, second)
    assert from_claim.messages == fresh.messages
    assert [m.content for m in from_claim.messages][-3:] == ["first question", "first answer", "second question"]


def test_history_is_read_again_only_for_a_persona_with_its_own_budget(ext, monkeypatch):
    _, mid = queued(ext)
    claim = ext.replies.claim(mid, "t")
    reads = []
    real_history = ext.store.history
    monkeypatch.setattr(ext.store, "history", lambda *a, **kw: reads.append(kw.get("budget_tokens")) or real_history(*a, **kw))
    request_for_reply(ext, mid, claim.source)
    assert reads == []  # the default budget: the claim's read is used
    tight = replace(ext.catalog.persona(None), history_budget=10)
    monkeypatch.setattr("chatapp.chat.conversation_persona", lambda _ext, _conv: tight)
    request_for_reply(ext, mid, claim.source)
    assert reads == [10]


def _done(mid):
    from chatapp.models import DONE, GenerationResult

    return GenerationResult(mid, DONE, "first answer", finish_reason="stop")


@pytest.fixture()
def new_writer(ext):
    """Starts a writer once the test has set its timings (past its first tick, which comes at
    once); every one is stopped at the end."""
    started = []

    def start() -> EventWriter:
        w = EventWriter(ext.replies)
        w.start()
        started.append(w)
        time.sleep(0.05)
        return w

    yield start
    for w in started:
        w.stop()


@pytest.fixture()
def slow_ticks(monkeypatch):
    """A writer that ticks every 5 s: what its tick would take, it has not taken within a test."""
    monkeypatch.setattr(event_writer, "TICK_S", 5.0)
    return monkeypatch


def claimed_run(ext, w):
    _, mid = queued(ext)
    run = w.for_run(mid)
    assert ext.replies.claim(mid, run.token).status == "ok"
    return run


def test_a_short_replys_events_stay_with_it_for_its_finish(ext, slow_ticks, new_writer):
    sent = counted_writes(slow_ticks)
    run = claimed_run(ext, new_writer())
    run.generating()
    for i in range(3):
        run.append([("delta", {"text": str(i)}, str(i))])
    time.sleep(0.1)  # a writer woken by those appends would have written them by now
    assert [text for _t, _d, text in run.take_rest()] == ["0", "1", "2"]
    assert sent == [] and deltas(ext, run.mid) == []  # the writer never wrote them


def test_held_events_go_out_at_the_next_tick_when_the_provider_goes_quiet(ext, writer):
    run = claimed_run(ext, writer)
    run.generating()
    run.append([("status", {"state": "provider_queued"}, ""), ("delta", {"text": "a"}, "a")])
    deadline = time.monotonic() + 2
    while partial(ext, run.mid) != "a":  # no finish, no wait: the tick
        assert time.monotonic() < deadline, "held events were not written"
        time.sleep(0.005)
    assert run.take_rest() == []


def append_and_wait(ext, run, text: str) -> None:
    """One delta, then wait for the writer: it must have stored it."""
    run.append([("delta", {"text": text}, text)])
    run.wait(timeout=2)
    assert partial(ext, run.mid) == text


def test_events_after_the_first_moments_go_out_at_once(ext, slow_ticks, new_writer):
    run = claimed_run(ext, new_writer())  # its next tick is 5 s away
    run.generating()
    run.hold_until = time.monotonic()  # as if the provider started a while ago
    append_and_wait(ext, run, "late")


def test_a_hold_wakes_a_writer_that_went_to_sleep(ext, monkeypatch, new_writer):
    monkeypatch.setattr(event_writer, "AWAKE_S", 0.05)
    w = new_writer()
    deadline = time.monotonic() + 2
    while not w.asleep:  # no holds for AWAKE_S: it waits without ticking
        assert time.monotonic() < deadline, "the writer never went to sleep"
        time.sleep(0.01)
    run = claimed_run(ext, w)
    run.generating()
    append_and_wait(ext, run, "wake")


def test_stop_writes_held_events(ext, slow_ticks, new_writer):
    w = new_writer()
    run = claimed_run(ext, w)
    run.generating()
    run.append([("delta", {"text": "held"}, "held")])
    w.stop()
    assert partial(ext, run.mid) == "held"
