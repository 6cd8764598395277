"""Regenerate (versions of a reply) and feedback on replies, through the REST API with a worker."""
from __future__ import annotations

import json
import time

import pytest

from chatapp.hookspecs import hookimpl
from tests.conftest import auth
from tests.test_rest import assert_error, create_conv, send


def wait_final(client, key, cid, mid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = client.get(f"/api/v1/conversations/{cid}/messages/{mid}", headers=auth(key)).json
        if msg["state"] in ("done", "failed", "cancelled"):
            return msg
        time.sleep(0.05)
    raise AssertionError(f"{mid} did not finish: {msg}")


def regenerate(client, key, cid, **body):
    return client.post(f"/api/v1/conversations/{cid}/regenerate", json=body, headers=auth(key))


@pytest.fixture()
def chatted(client, user_key, worker):
    conv = create_conv(client, user_key)
    first = send(client, user_key, conv["id"], "first question", wait=True).json
    second = send(client, user_key, conv["id"], "second question", wait=True).json
    return conv["id"], first, second


def test_regenerate_replaces_last_reply_and_keeps_versions(client, user_key, ext, chatted):
    cid, _, second = chatted
    old = second["message"]
    r = regenerate(client, user_key, cid, params={"temperature": 1.5})
    assert r.status_code == 202, r.json
    assert r.json["replaces"] == old["id"] and r.json["message"]["state"] in ("queued", "generating", "done")
    new = wait_final(client, user_key, cid, r.json["message_id"])
    assert new["state"] == "done" and new["content"] == old["content"]  # echo is deterministic
    assert new["reply_to"] == old["reply_to"]
    assert new["versions"] == [old["id"], new["id"]] and new["version"] == 2
    # the old version is still there, knows its siblings, and its text is untouched
    prev = client.get(f"/api/v1/conversations/{cid}/messages/{old['id']}", headers=auth(user_key)).json
    assert prev["content"] == old["content"] and prev["versions"] == new["versions"] and prev["version"] == 1
    # the conversation shows one reply per turn: the newest version, in the old one's place
    conv = client.get(f"/api/v1/conversations/{cid}", headers=auth(user_key)).json
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "user", "assistant"]
    assert conv["messages"][-1]["id"] == new["id"] and conv["message_count"] == 4
    # a third version, and the next turn's history uses the newest one
    third = regenerate(client, user_key, cid, message_id=new["id"]).json["message_id"]
    wait_final(client, user_key, cid, third)
    got = client.get(f"/api/v1/conversations/{cid}/messages/{third}", headers=auth(user_key)).json
    assert got["versions"] == [old["id"], new["id"], third] and got["version"] == 3
    history = ext.store.history(cid)
    assert [t.role for t in history] == ["user", "assistant", "user", "assistant"]


def test_regenerate_refuses_stale_unfinished_and_foreign(client, user_key, other_key, ext, chatted, app_config):
    cid, first, second = chatted
    # a reply that is not the last one
    r = regenerate(client, user_key, cid, message_id=first["message"]["id"])
    assert_error(r, 409, "not_last_reply")["details"]["last_message_id"] == second["message"]["id"]
    # another user's conversation, or a message that does not exist: 404 like a missing one
    assert_error(regenerate(client, other_key, cid), 404, "conversation_not_found")
    assert_error(regenerate(client, user_key, "c_missing"), 404)
    assert_error(regenerate(client, user_key, cid, message_id="m_nope"), 404, "message_not_found")
    # unknown fields and bad params: 400, nothing stored
    before = ext.redis.zrange(f"{ext.prefix}conv:{cid}:msgs", 0, -1)
    assert_error(regenerate(client, user_key, cid, colour="blue"), 400, "validation_error")
    assert_error(regenerate(client, user_key, cid, params={"max_tokens": 10**6}), 400)
    assert ext.redis.zrange(f"{ext.prefix}conv:{cid}:msgs", 0, -1) == before
    # a conversation with no reply yet
    empty = create_conv(client, user_key)
    assert_error(regenerate(client, user_key, empty["id"]), 409, "nothing_to_regenerate")


def test_regenerate_while_generating_is_409(app_config):
    from tests.conftest import close_app, make_app

    application = make_app(app_config)
    try:
        ext = application.extensions["chatapp"]
        key = ext.users.create("slow")[1]
        client = application.test_client()
        cid = create_conv(client, key)["id"]
        sent = send(client, key, cid, "a b c d e f").json  # no worker: stays queued
        asked = []

        class Watcher:
            @hookimpl
            def before_generation(self, request):
                asked.append(request.message_id)

        ext.pm.register(Watcher())
        r = regenerate(client, key, cid)
        assert_error(r, 409, "reply_in_progress")["details"]["message_id"] == sent["message_id"]
        assert asked == []  # refused before any plugin reserved budget for it
        client.post(f"/api/v1/conversations/{cid}/messages/{sent['message_id']}/cancel", headers=auth(key))
        r = regenerate(client, key, cid)  # a stopped reply can be regenerated
        assert r.status_code == 202, r.json
    finally:
        close_app(application)


def test_delete_conversation_removes_every_version(client, user_key, ext, chatted):
    cid, _, second = chatted
    mids = [second["message"]["id"]]
    for _ in range(2):
        mid = regenerate(client, user_key, cid).json["message_id"]
        wait_final(client, user_key, cid, mid)
        mids.append(mid)
    assert client.delete(f"/api/v1/conversations/{cid}", headers=auth(user_key)).status_code == 204
    for mid in mids:
        assert not ext.redis.exists(f"{ext.prefix}msg:{mid}", f"{ext.prefix}ev:{mid}")
    assert not ext.redis.exists(f"{ext.prefix}msg:{second['user_message']['id']}:versions")


def test_regenerated_reply_is_costed_and_counted(client, user_key, ext, chatted):
    cid, _, _ = chatted
    before = client.get(f"/api/v1/conversations/{cid}", headers=auth(user_key)).json["cost_usd"]
    mid = regenerate(client, user_key, cid).json["message_id"]
    reply = wait_final(client, user_key, cid, mid)
    after = client.get(f"/api/v1/conversations/{cid}", headers=auth(user_key)).json["cost_usd"]
    # every version was paid for, so the conversation's total includes them all
    assert after == pytest.approx(before + reply["cost_usd"])
    assert reply["cached"] is False  # regenerate never answers from the cache


class FeedbackRecorder:
    def __init__(self):
        self.calls = []

    @hookimpl
    def after_feedback(self, feedback, host):
        self.calls.append(feedback)


def test_feedback_stored_shown_and_counted(client, user_key, other_key, ext, chatted):
    cid, first, _ = chatted
    recorder = FeedbackRecorder()
    ext.pm.register(recorder)
    mid = first["message"]["id"]
    url = f"/api/v1/conversations/{cid}/messages/{mid}/feedback"
    r = client.post(url, json={"rating": "up", "comment": "spot on"}, headers=auth(user_key))
    assert r.status_code == 200 and r.json["feedback"]["rating"] == "up" and r.json["feedback"]["comment"] == "spot on"
    got = client.get(f"/api/v1/conversations/{cid}/messages/{mid}", headers=auth(user_key)).json
    assert got["feedback"]["rating"] == "up"
    # a change of mind moves the counters instead of adding to both
    assert client.post(url, json={"rating": "down"}, headers=auth(user_key)).status_code == 200
    assert [(f.rating, f.previous_rating) for f in recorder.calls] == [("up", None), ("down", "up")]
    assert recorder.calls[0].conversation_id == cid and recorder.calls[0].comment == "spot on"
    totals = client.get("/api/v1/usage", headers=auth(user_key)).json["totals"]
    assert totals["feedback_up"] == 0 and totals["feedback_down"] == 1
    ext.pm.unregister(recorder)


def test_feedback_errors(client, user_key, other_key, ext, chatted):
    cid, first, _ = chatted
    reply, user_msg = first["message"]["id"], first["user_message"]["id"]
    url = f"/api/v1/conversations/{cid}/messages/{reply}/feedback"
    assert_error(client.post(url, json={"rating": "up"}, headers=auth(other_key)), 404, "message_not_found")
    assert_error(client.post(f"/api/v1/conversations/{cid}/messages/m_x/feedback", json={"rating": "up"},
                             headers=auth(user_key)), 404)
    assert_error(client.post(url, json={"rating": "sideways"}, headers=auth(user_key)), 400, "validation_error")
    assert_error(client.post(url, json={"rating": "up", "comment": "x" * 2001}, headers=auth(user_key)), 400)
    assert_error(client.post(url, json={}, headers=auth(user_key)), 400)
    assert_error(client.post(f"/api/v1/conversations/{cid}/messages/{user_msg}/feedback", json={"rating": "up"},
                             headers=auth(user_key)), 409, "not_a_reply")
    assert not ext.redis.hget(f"{ext.prefix}msg:{reply}", "feedback")


def test_feedback_survives_a_failing_plugin(client, user_key, ext, chatted):
    cid, first, _ = chatted

    class Broken:
        @hookimpl
        def after_feedback(self, feedback):
            raise RuntimeError("analytics down")

    broken = Broken()
    ext.pm.register(broken)
    try:
        mid = first["message"]["id"]
        r = client.post(f"/api/v1/conversations/{cid}/messages/{mid}/feedback", json={"rating": "down"},
                        headers=auth(user_key))
        assert r.status_code == 200 and r.json["feedback"]["rating"] == "down"
        assert json.loads(ext.redis.hget(f"{ext.prefix}msg:{mid}", "feedback"))["rating"] == "down"
    finally:
        ext.pm.unregister(broken)


def test_admin_message_csv_has_feedback_column(client, user_key, ext, chatted):
    import csv
    import io

    cid, first, _ = chatted
    mid = first["message"]["id"]
    client.post(f"/api/v1/conversations/{cid}/messages/{mid}/feedback", json={"rating": "up"}, headers=auth(user_key))
    admin_key = ext.users.create("boss", admin=True)[1]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = client.get("/api/v1/admin/usage/messages.csv", headers=auth(admin_key)).get_data(as_text=True)
        rows = {row["message_id"]: row for row in csv.DictReader(io.StringIO(text))}
        if mid in rows:
            break
        time.sleep(0.1)
    assert rows[mid]["feedback"] == "up"
