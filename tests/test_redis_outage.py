"""Redis briefly unreachable: a clear 503 (or error frame), nothing half-written, recovery after."""
from __future__ import annotations

import pytest

from tests.conftest import LiveServer, RedisServer, auth, close_app, make_app, redis_binary
from tests.wsclient import WS


@pytest.fixture()
def outage(app_config):
    server = RedisServer(redis_binary(), appendonly=True)
    application = make_app({**app_config, "REDIS_URL": server.url})
    yield server, application
    close_app(application)
    server.cleanup()


def test_redis_down_gives_503_and_loses_nothing(outage):
    server, app = outage
    ext = app.extensions["chatapp"]
    key = ext.users.create("o")[1]
    c = app.test_client()
    conv = c.post("/api/v1/conversations", json={"title": "kept"}, headers=auth(key)).json
    assert c.post(f"/api/v1/conversations/{conv['id']}/messages", json={"content": "first"},
                  headers=auth(key)).status_code == 202
    live = LiveServer(app)
    ws = WS(live.ws_url, key)
    try:
        ext.redis.config_set("appendfsync", "always")
        ext.redis.execute_command("BGREWRITEAOF")
        server.stop()
        r = c.post(f"/api/v1/conversations/{conv['id']}/messages", json={"content": "second"}, headers=auth(key))
        assert r.status_code == 503 and r.json["error"]["code"] == "unavailable" and r.headers["Retry-After"]
        assert "Traceback" not in r.get_data(as_text=True)
        ws.send({"type": "send", "conversation_id": conv["id"], "content": "third"})
        err = ws.recv()
        assert err["type"] == "error" and err["code"] == "unavailable"
        server.start()
        got = c.get(f"/api/v1/conversations/{conv['id']}", headers=auth(key)).json
        assert got["message_count"] == 2 and [m["content"] for m in got["messages"]][0] == "first"
        assert c.post(f"/api/v1/conversations/{conv['id']}/messages", json={"content": "after"},
                      headers=auth(key)).status_code == 202
        ws.send({"type": "ping"})
        assert ws.recv() == {"type": "pong"}
    finally:
        ws.close()
        live.stop()
