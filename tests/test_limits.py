"""Per-user limits: request and send rates (429 + Retry-After), replies in progress, sockets."""
from __future__ import annotations

import pytest
import websocket

from tests.conftest import LiveServer, auth, close_app, make_app
from tests.wsclient import WS


@pytest.fixture()
def limited(app_config):
    app = make_app({**app_config, "RATE_LIMIT_SENDS_PER_MINUTE": 3, "RATE_LIMIT_REQUESTS_PER_MINUTE": 8,
                    "MAX_ACTIVE_GENERATIONS": 2, "MAX_SOCKETS_PER_USER": 2, "CACHE_ENABLED": False})
    yield app, app.extensions["chatapp"]
    close_app(app)


def test_send_rate_and_active_replies(limited):
    app, ext = limited
    c = app.test_client()
    _, key = ext.users.create("busy")
    conv = c.post("/api/v1/conversations", json={}, headers=auth(key)).json
    url = f"/api/v1/conversations/{conv['id']}/messages"
    assert [c.post(url, json={"content": f"m{i}"}, headers=auth(key)).status_code for i in range(2)] == [202, 202]
    third = c.post(url, json={"content": "m2"}, headers=auth(key))  # no worker: two replies still queued
    assert third.status_code == 429 and third.json["error"]["code"] == "too_many_generations"
    assert third.headers["Retry-After"]
    mid = c.get(url, headers=auth(key)).json["items"][-1]["id"]
    c.post(f"{url}/{mid}/cancel", headers=auth(key))  # one ends: room for another
    fourth = c.post(url, json={"content": "m3"}, headers=auth(key))
    assert fourth.status_code == 429 and fourth.json["error"]["code"] == "rate_limited"  # 4th send this minute
    assert 1 <= int(fourth.headers["Retry-After"]) <= 60
    assert fourth.json["error"]["details"]["limit_per_minute"] == 3


def test_request_rate_limit_counts_every_api_call_per_user(limited):
    app, ext = limited
    c = app.test_client()
    _, key = ext.users.create("chatty")
    _, other = ext.users.create("quiet")
    codes = [c.get("/api/v1/conversations", headers=auth(key)).status_code for _ in range(9)]
    assert codes == [200] * 8 + [429]
    assert c.get("/api/v1/conversations", headers=auth(other)).status_code == 200  # per user


def test_sockets_per_user(limited):
    app, ext = limited
    _, key = ext.users.create("tabs")
    live = LiveServer(app)
    try:
        first, second = WS(live.ws_url, key), WS(live.ws_url, key)
        for ws in (first, second):  # make sure both sessions are registered
            ws.send({"type": "ping"})
            assert ws.recv() == {"type": "pong"}
        with pytest.raises(websocket.WebSocketBadStatusException) as exc:
            WS(live.ws_url, key)
        assert exc.value.status_code == 429
        first.close()
        import time

        deadline = time.time() + 5
        while ext.sockets.count() > 1 and time.time() < deadline:
            time.sleep(0.05)
        WS(live.ws_url, key).close()
    finally:
        live.stop()
