"""The websocket API against a real server on loopback with a real client (DESIGN.md section 6)."""
from __future__ import annotations

import random

import pytest
import requests
import websocket

from tests.wsclient import WS, assert_gap_free, text_of

def open_ws(live_server, key):
    return WS(live_server.ws_url, key)


def stored(ext, mid):
    return ext.redis.hgetall(f"{ext.prefix}msg:{mid}")


def test_send_streams_accepted_status_deltas_done(live_server, user_key, worker, ext):
    ws = open_ws(live_server, user_key)
    ws.send({"type": "send", "conversation_id": None, "content": "hello streaming world", "client_message_id": "c1"})
    accepted = ws.recv()
    assert accepted["type"] == "accepted" and accepted["client_message_id"] == "c1"
    assert set(accepted) == {"type", "conversation_id", "user_message_id", "message_id", "client_message_id"}
    mid = accepted["message_id"]
    frames = ws.reply_frames(mid)
    assert frames[0] == {"type": "status", "message_id": mid, "seq": 1, "state": "queued"}
    assert any(f["type"] == "status" and f["state"] == "generating" for f in frames)
    assert_gap_free(frames)
    done = frames[-1]
    assert done["type"] == "done" and done["finish_reason"] == "stop" and done["cached"] is False
    assert set(done) >= {"usage", "cost_usd"}
    assert text_of(frames) == stored(ext, mid)["content"] == "Echo (assistant): hello streaming world"
    ws.send({"type": "ping"})
    assert ws.recv() == {"type": "pong"}
    ws.close()


def test_resume_exactly_once_at_random_cut_points(live_server, user_key, worker, ext):
    rng = random.Random(7)
    ws = open_ws(live_server, user_key)
    ws.send({"type": "send", "conversation_id": None, "content": " ".join(f"w{i}" for i in range(40)),
             "params": {}})
    mid = ws.recv()["message_id"]
    full = ws.reply_frames(mid)
    ws.close()
    final_seq = full[-1]["seq"]
    for cut in [0, 1, final_seq - 1, final_seq] + [rng.randrange(final_seq) for _ in range(6)]:
        again = open_ws(live_server, user_key)
        again.send({"type": "subscribe", "message_id": mid, "after_seq": cut})
        if cut == final_seq:
            again.send({"type": "ping"})
            assert again.recv() == {"type": "pong"}  # nothing left to replay
        else:
            rest = again.reply_frames(mid)
            assert [f["seq"] for f in rest] == list(range(cut + 1, final_seq + 1))
            assert rest == full[cut:]
        again.close()


def test_disconnect_mid_reply_then_resume_live(live_server, user_key, worker, ext):
    ext.catalog.providers["echo"].delay_s = 0.03  # slow enough to cut in the middle
    ws = open_ws(live_server, user_key)
    ws.send({"type": "send", "conversation_id": None, "content": " ".join(f"t{i}" for i in range(60))})
    mid = ws.recv()["message_id"]
    seen = ws.until(lambda f: f.get("type") == "delta" and f["seq"] >= 6)
    last = seen[-1]["seq"]
    ws.close()  # drop mid-reply: not a cancel
    again = open_ws(live_server, user_key)
    again.send({"type": "subscribe", "message_id": mid, "after_seq": last})
    rest = again.reply_frames(mid)
    assert rest[0]["seq"] == last + 1 and rest[-1]["type"] == "done" and rest[-1]["finish_reason"] == "stop"
    assert_gap_free(rest, last + 1)
    assert text_of([f for f in seen if f.get("message_id") == mid]) + text_of(rest) == stored(ext, mid)["content"]


def test_two_sockets_follow_one_reply(live_server, user_key, worker, ext):
    ext.catalog.providers["echo"].delay_s = 0.01
    a, b = open_ws(live_server, user_key), open_ws(live_server, user_key)
    a.send({"type": "send", "conversation_id": None, "content": "shared " * 20})
    mid = a.recv()["message_id"]
    b.send({"type": "subscribe", "message_id": mid, "after_seq": 0})
    fa, fb = a.reply_frames(mid), b.reply_frames(mid)
    assert fa == fb and fa[-1]["type"] == "done"
    assert_gap_free(fa)


def test_cancel_frame_stops_generation_and_keeps_partial(live_server, user_key, worker, ext):
    ext.catalog.providers["echo"].delay_s = 0.05
    ws = open_ws(live_server, user_key)
    ws.send({"type": "send", "conversation_id": None, "content": " ".join(f"x{i}" for i in range(200))})
    mid = ws.recv()["message_id"]
    before = ws.until(lambda f: f.get("type") == "delta" and f["seq"] >= 5)
    ws.send({"type": "cancel", "message_id": mid})
    rest = ws.reply_frames(mid, timeout=10)
    done = rest[-1]
    assert done["type"] == "done" and done["finish_reason"] == "cancelled"
    frames = [f for f in before if f.get("message_id") == mid] + rest
    assert_gap_free(frames)
    record = stored(ext, mid)
    assert record["state"] == "cancelled" and record["content"] == text_of(frames)
    assert 0 < len(record["content"]) < len("x199 " * 200)


@pytest.mark.parametrize("raw,code", [
    ("not json", "invalid_json"),
    ("[1,2]", "invalid_frame"),
    ('{"type": "dance"}', "unknown_frame_type"),
    ('{"no": "type"}', "unknown_frame_type"),
    ('{"type": "send", "conversation_id": null}', "validation_error"),
    ('{"type": "send", "conversation_id": null, "content": "x", "extra": 1}', "validation_error"),
    ('{"type": "send", "conversation_id": null, "content": ""}', "empty_content"),
    ('{"type": "subscribe", "message_id": "m_x", "after_seq": -1}', "validation_error"),
    ('{"type": "subscribe", "message_id": "m_nope", "after_seq": 0}', "message_not_found"),
    ('{"type": "cancel", "message_id": "m_nope"}', "message_not_found"),
    ('{"type": "send", "conversation_id": "c_nope", "content": "hi"}', "conversation_not_found"),
    # found by tests/test_fuzz.py (each was an internal_error with a logged traceback, or a relay
    # replay that failed on every sweep)
    ('{"type": ["send"]}', "unknown_frame_type"),
    ('{"type": {"a": 1}}', "unknown_frame_type"),
    ('{"type": "send", "conversation_id": null, "content": "\\ud800"}', "invalid_json"),
    ("[" * 5000 + "]" * 5000, "invalid_json"),
    ('{"type": "subscribe", "message_id": "m_x", "after_seq": 18446744073709551616}', "validation_error"),
])
def test_bad_frames_get_error_and_socket_stays_open(live_server, user_key, raw, code):
    ws = open_ws(live_server, user_key)
    ws.send(raw)
    err = ws.recv()
    assert err["type"] == "error" and err["code"] == code and err["message"]
    ws.send({"type": "ping"})
    assert ws.recv() == {"type": "pong"}
    ws.close()


def test_binary_and_oversized_frames(live_server, user_key):
    ws = open_ws(live_server, user_key)
    ws.conn.send_binary(b"\x00\x01")
    assert ws.recv()["code"] == "invalid_frame"
    ws.send({"type": "send", "conversation_id": None, "content": "y" * (32 * 1024 + 10)})
    assert ws.recv()["code"] == "content_too_large"
    ws.send({"type": "ping"})
    assert ws.recv() == {"type": "pong"}


def test_no_upgrade_without_key_or_from_foreign_origin(live_server, user_key):
    for headers in ([], ["Authorization: Bearer wrong"]):
        with pytest.raises(websocket.WebSocketBadStatusException) as exc:
            WS(live_server.ws_url, headers=headers)
        assert exc.value.status_code == 401
    with pytest.raises(websocket.WebSocketBadStatusException) as exc:
        WS(live_server.ws_url, user_key, origin="https://evil.example")
    assert exc.value.status_code == 403
    # same host is always allowed
    WS(live_server.ws_url, user_key, origin=live_server.url).close()
    r = requests.get(live_server.ws_url.replace("ws://", "http://"), headers={"Connection": "Upgrade",
                     "Upgrade": "websocket", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                     "Sec-WebSocket-Version": "13"}, timeout=5)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_other_users_reply_is_invisible_on_every_frame(live_server, user_key, other_key, worker, ext):
    owner = open_ws(live_server, user_key)
    owner.send({"type": "send", "conversation_id": None, "content": "private"})
    acc = owner.recv()
    owner.reply_frames(acc["message_id"])
    thief = open_ws(live_server, other_key)
    for frame in ({"type": "subscribe", "message_id": acc["message_id"], "after_seq": 0},
                  {"type": "subscribe", "message_id": acc["user_message_id"], "after_seq": 0},
                  {"type": "cancel", "message_id": acc["message_id"]},
                  {"type": "send", "conversation_id": acc["conversation_id"], "content": "hi"}):
        thief.send(frame)
        err = thief.recv()
        assert err["type"] == "error" and err["code"].endswith("not_found") and "private" not in str(err)
    thief.send({"type": "ping"})
    assert thief.recv() == {"type": "pong"}


def test_duplicate_send_is_same_reply(live_server, user_key, worker, ext):
    ws = open_ws(live_server, user_key)
    ws.send({"type": "send", "conversation_id": None, "content": "once", "client_message_id": "dup-1"})
    first = ws.recv()
    frames = ws.reply_frames(first["message_id"])
    ws.send({"type": "send", "conversation_id": None, "content": "once", "client_message_id": "dup-1"})
    second = ws.recv()
    assert second["message_id"] == first["message_id"] and second["conversation_id"] == first["conversation_id"]
    assert ws.reply_frames(second["message_id"]) == frames  # replayed, not regenerated


def test_allowed_origins_setting(live_server, user_key, app):
    app.config["ALLOWED_ORIGINS"] = "https://chat.example.com, https://other.example"
    WS(live_server.ws_url, user_key, origin="https://chat.example.com").close()
    with pytest.raises(websocket.WebSocketBadStatusException):
        WS(live_server.ws_url, user_key, origin="https://chat.example.com.evil.io")


def test_frame_over_the_limit_gets_error_and_socket_stays_open(live_server, user_key):
    ws = open_ws(live_server, user_key)
    ws.send({"type": "ping", "pad": "z" * (64 * 1024)})
    err = ws.recv()
    assert err["type"] == "error" and err["code"] == "frame_too_large"
    ws.send({"type": "ping"})
    assert ws.recv() == {"type": "pong"}


def test_ws_ticket_is_single_use_and_bound_to_its_user(live_server, user_key, other_key, client, worker):
    r = client.post("/api/v1/ws-tickets", headers={"Authorization": f"Bearer {user_key}"})
    assert r.status_code == 201 and r.json["expires_in"] == 30 and r.json["ticket"].startswith("wst_")
    ticket = r.json["ticket"]
    ws = WS(f"{live_server.ws_url}?ticket={ticket}")  # no Authorization header: a browser
    ws.send({"type": "send", "conversation_id": None, "content": "ticketed"})
    acc = ws.recv()
    assert ws.reply_frames(acc["message_id"])[-1]["type"] == "done"
    ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException) as exc:
        WS(f"{live_server.ws_url}?ticket={ticket}")  # used once already
    assert exc.value.status_code == 401
    with pytest.raises(websocket.WebSocketBadStatusException):
        WS(f"{live_server.ws_url}?ticket=wst_forged")
    # the ticket's user owns what the socket sends
    other = client.get(f"/api/v1/conversations/{acc['conversation_id']}",
                       headers={"Authorization": f"Bearer {other_key}"})
    assert other.status_code == 404
    assert client.post("/api/v1/ws-tickets").status_code == 401
