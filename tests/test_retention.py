"""Retention: idle conversations deleted with everything they own; one sweeper at a time."""
from __future__ import annotations

import threading
import time

from chatapp.retention import DAY_MS, RetentionSweeper
from tests.conftest import app_with_worker, auth


def chat(app, key, text):
    r = app.test_client().post("/api/v1/chat", json={"message": text}, headers=auth(key))
    assert r.status_code == 200, r.json
    return r.json


def age(ext, uid, cid, days, index="convs"):
    """Make a conversation's last activity ``days`` ago (its score in the user's index)."""
    ext.redis.zadd(f"{ext.prefix}user:{uid}:{index}", {cid: int(time.time() * 1000 - days * DAY_MS)})


def owned_keys(ext, cid):
    """Every key a conversation owns: its hash and index, its messages, partials and streams."""
    p = ext.prefix
    mids = ext.redis.zrange(f"{p}conv:{cid}:msgs", 0, -1)
    keys = [f"{p}conv:{cid}", f"{p}conv:{cid}:msgs"]
    for mid in mids:
        keys += [f"{p}msg:{mid}", f"{p}msg:{mid}:partial", f"{p}ev:{mid}"]
    return keys, mids


def test_old_conversations_go_with_their_messages_streams_and_indexes(app, ext, worker, user_key):
    uid = ext.users.authenticate(user_key).id
    convs = [chat(app, user_key, f"hello {i}")["conversation_id"] for i in range(6)]
    old, batch_conv, recent = convs[:4], convs[4], convs[5]
    for cid in old:
        age(ext, uid, cid, 40)
    # a batch conversation lives in its own index, out of the sidebar
    ext.redis.zrem(f"{ext.prefix}user:{uid}:convs", batch_conv)
    age(ext, uid, batch_conv, 31, index="batchconvs")
    age(ext, uid, recent, 29)
    doomed = {}
    for cid in [*old, batch_conv]:
        keys, mids = owned_keys(ext, cid)
        assert len(mids) == 2 and ext.redis.exists(*keys) >= 5  # hashes, index, stream of the reply
        doomed[cid] = keys
    kept_keys, _ = owned_keys(ext, recent)
    kept = ext.redis.exists(*kept_keys)

    sweeper = RetentionSweeper(ext, days=30, batch=2)  # several batches per index
    assert sweeper.sweep() == 5

    for cid, keys in doomed.items():
        assert ext.redis.exists(*keys) == 0, cid
    for index in ("convs", "batchconvs"):
        assert ext.redis.zrange(f"{ext.prefix}user:{uid}:{index}", 0, -1) == ([recent] if index == "convs" else [])
    assert ext.redis.exists(*kept_keys) == kept
    listed = app.test_client().get("/api/v1/conversations", headers=auth(user_key)).json["items"]
    assert [c["id"] for c in listed] == [recent]
    assert sweeper.sweep() == 0  # nothing left to do


def test_other_users_are_swept_too_and_stale_index_entries_are_dropped(app, ext, worker, user_key, other_key):
    alice, bob = ext.users.authenticate(user_key).id, ext.users.authenticate(other_key).id
    a = chat(app, user_key, "a")["conversation_id"]
    b = chat(app, other_key, "b")["conversation_id"]
    age(ext, alice, a, 100)
    age(ext, bob, b, 100)
    age(ext, bob, "c_already_gone", 100)  # an index entry whose conversation no longer exists
    assert RetentionSweeper(ext, days=30).sweep() == 2
    assert ext.redis.zcard(f"{ext.prefix}user:{bob}:convs") == 0


def test_off_by_default(app, ext, user_key):
    sweeper = RetentionSweeper(ext)
    assert ext.config["RETENTION_DAYS"] is None and not sweeper.enabled
    assert sweeper.sweep() == 0
    assert sweeper.start()._thread is None  # no thread at all


def test_a_held_lock_keeps_a_second_sweeper_out(app, ext, worker, user_key, monkeypatch):
    uid = ext.users.authenticate(user_key).id
    cids = [chat(app, user_key, f"m{i}")["conversation_id"] for i in range(3)]
    for cid in cids:
        age(ext, uid, cid, 60)
    first, second = RetentionSweeper(ext, days=30, interval_s=3600), RetentionSweeper(ext, days=30, interval_s=3600)
    # someone else's sweep in progress
    ext.redis.set(first.lock_key, "another-process", px=5000)
    assert first.sweep() is None and second.sweep() is None
    assert ext.redis.zcard(f"{ext.prefix}user:{uid}:convs") == 3
    ext.redis.delete(first.lock_key)

    # two sweepers at once: the slow one holds the lock, the other backs off
    delete = ext.store.delete_conversation
    started = threading.Event()

    def slow_delete(u, c):
        started.set()
        time.sleep(0.2)
        delete(u, c)

    monkeypatch.setattr(ext.store, "delete_conversation", slow_delete)
    results = {}
    runner = threading.Thread(target=lambda: results.setdefault("first", first.sweep()))
    runner.start()
    assert started.wait(5)
    assert second.sweep() is None
    runner.join(10)
    assert results["first"] == 3
    assert not ext.redis.exists(first.lock_key)  # released
    # the schedule: a sweep just ran, so a due-only sweep waits for the next interval
    assert second.sweep(only_if_due=True) is None
    assert second.sweep() == 0


def test_a_sweeper_whose_lock_lapsed_stops(app, ext, worker, user_key, monkeypatch):
    uid = ext.users.authenticate(user_key).id
    for i in range(3):
        age(ext, uid, chat(app, user_key, f"l{i}")["conversation_id"], 60)
    sweeper = RetentionSweeper(ext, days=30, batch=1)
    delete = ext.store.delete_conversation

    def delete_then_lose_the_lock(u, c):
        delete(u, c)
        ext.redis.set(sweeper.lock_key, "someone-else")  # ours expired; another took over

    monkeypatch.setattr(ext.store, "delete_conversation", delete_then_lose_the_lock)
    assert sweeper.sweep() is None
    assert ext.redis.zcard(f"{ext.prefix}user:{uid}:convs") == 2  # stopped after its first batch
    assert ext.redis.get(sweeper.lock_key) == "someone-else"  # and did not free another's lock


def test_workers_sweep_on_their_schedule(app_config):
    config = {**app_config, "RETENTION_DAYS": 7, "RETENTION_SWEEP_S": 0.2}
    with app_with_worker(config) as (app, ext):
        _, key = ext.users.create("scheduled")
        uid = ext.users.authenticate(key).id
        old = chat(app, key, "old")["conversation_id"]
        new = chat(app, key, "new")["conversation_id"]
        age(ext, uid, old, 8)
        deadline = time.time() + 10
        while ext.redis.exists(f"{ext.prefix}conv:{old}"):
            assert time.time() < deadline, "the worker's sweeper never deleted the old conversation"
            time.sleep(0.05)
        assert ext.redis.exists(f"{ext.prefix}conv:{new}")


def test_cli_sweep(app, ext, worker, user_key):
    uid = ext.users.authenticate(user_key).id
    age(ext, uid, chat(app, user_key, "cli")["conversation_id"], 45)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["retention", "sweep"])
    assert result.exit_code != 0 and "CHATAPP_RETENTION_DAYS" in result.output
    result = runner.invoke(args=["retention", "sweep", "--days", "30"])
    assert result.exit_code == 0, result.output
    assert "Deleted 1 conversations" in result.output
    assert ext.redis.zcard(f"{ext.prefix}user:{uid}:convs") == 0
