"""The response cache plugin: what hits, what must miss, stats, admin routes."""
from __future__ import annotations

import time
import types

import pytest

from chatapp import Cost, ModelInfo, Persona, hookimpl
from plugins.echo import EchoProvider
from tests.conftest import LiveServer, app_with_worker, auth
from tests.wsclient import WS, text_of


def pricing_plugin(micros):
    module = types.ModuleType("test_pricing")
    module.price_generation = hookimpl(lambda request, result: Cost(micros, {"test": True}))
    module.register_providers = hookimpl(lambda config: [
        EchoProvider(id="echo2", models=[ModelInfo("echo-x")], default_model="echo-x")])
    module.register_personas = hookimpl(lambda config: [
        Persona(name="faq", system_prompt="Answer FAQs.", cache_scope="persona"),
        Persona(name="other", system_prompt="Something else."),
    ])
    return module


@pytest.fixture()
def cached_app(app_config):
    with app_with_worker(app_config, (pricing_plugin(2500),)) as running:
        yield running


def chat(app, key, message, **body):
    r = app.test_client().post("/api/v1/chat", json={"message": message, **body}, headers=auth(key))
    assert r.status_code == 200, r.json
    return r.json


def wait_stored(ext, n=1, timeout=10):
    """after_generation (which stores entries) runs from the outbox, shortly after the reply."""
    deadline = time.time() + timeout
    while int(ext.redis.hget(ext.prefix + "cache:stats", "stores") or 0) < n:
        assert time.time() < deadline, "the reply was never stored in the cache"
        time.sleep(0.05)


def test_hit_is_free_instant_and_records_the_real_saving(cached_app):
    app, ext = cached_app
    user, key = ext.users.create("cacher")
    first = chat(app, key, "What are your opening hours?")
    assert first["cached"] is False and first["cost_usd"] == 0.0025
    wait_stored(ext)
    depth = ext.queue.depth()
    second = chat(app, key, "What are your opening hours?")  # a new conversation, same prompt
    assert second["cached"] is True and second["cost_usd"] == 0 and second["message"] == first["message"]
    assert ext.queue.depth() == depth
    deadline = time.time() + 10
    while app.test_client().get("/api/v1/usage", headers=auth(key)).json["cache"]["cost_saved_usd"] != 0.0025:
        assert time.time() < deadline
        time.sleep(0.05)


def test_hit_streams_the_same_frames_over_the_websocket(cached_app):
    app, ext = cached_app
    _, key = ext.users.create("wscache")
    chat(app, key, "Cached over the socket?")
    wait_stored(ext)
    live = LiveServer(app)
    try:
        ws = WS(live.ws_url, key)
        ws.send({"type": "send", "conversation_id": None, "content": "Cached over the socket?"})
        mid = ws.recv()["message_id"]
        frames = ws.reply_frames(mid)
        assert [f["type"] for f in frames] == ["delta", "done"] and frames[-1]["cached"] is True
        assert text_of(frames).startswith("Echo")
    finally:
        live.stop()


@pytest.mark.parametrize("change", ["history", "persona", "model_param", "user", "provider"])
def test_anything_that_changes_the_answer_misses(cached_app, change):
    app, ext = cached_app
    _, key = ext.users.create(f"miss-{change}")
    first = chat(app, key, "Same question")
    wait_stored(ext)
    body: dict = {}
    if change == "history":
        body["conversation_id"] = first["conversation_id"]
    elif change == "persona":
        body["persona"] = "other"
    elif change == "model_param":
        body["temperature"] = 0.3
    elif change == "user":
        key = ext.users.create(f"miss-{change}-2")[1]
    elif change == "provider":
        ext.catalog.default_provider = "echo2"  # the same text from another provider and model
    again = chat(app, key, "Same question", **body)
    assert again["cached"] is False


def test_persona_scope_shares_answers_between_users(cached_app):
    app, ext = cached_app
    a, b = ext.users.create("faq-a")[1], ext.users.create("faq-b")[1]
    chat(app, a, "How do I reset my password?", persona="faq")
    wait_stored(ext)
    assert chat(app, b, "How do I reset my password?", persona="faq")["cached"] is True
    assert chat(app, b, "How do I reset my password?", persona="other")["cached"] is False


def test_refresh_and_skip(cached_app):
    app, ext = cached_app
    _, key = ext.users.create("modes")
    chat(app, key, "Modes?")
    wait_stored(ext)
    assert chat(app, key, "Modes?", cache="skip")["cached"] is False
    assert chat(app, key, "Modes?", cache="refresh")["cached"] is False
    wait_stored(ext, 2)  # refresh stored again; skip did not
    time.sleep(0.3)
    assert int(ext.redis.hget(ext.prefix + "cache:stats", "stores")) == 2
    assert chat(app, key, "Modes?")["cached"] is True


def test_admin_stats_and_clear(cached_app):
    app, ext = cached_app
    _, admin_key = ext.users.create("boss", admin=True)
    _, key = ext.users.create("pleb")
    chat(app, key, "Stats?")
    wait_stored(ext)
    c = app.test_client()
    assert c.get("/api/v1/admin/cache", headers=auth(key)).status_code == 403
    stats = c.get("/api/v1/admin/cache", headers=auth(admin_key)).json
    assert stats["entries"] == 1 and stats["bytes"] > 0 and stats["misses"] >= 1
    assert c.delete("/api/v1/admin/cache", headers=auth(admin_key)).json == {"deleted": 1}
    assert chat(app, key, "Stats?")["cached"] is False


def test_preload_cli_fills_the_cache_for_a_shared_persona(cached_app, tmp_path):
    app, ext = cached_app
    questions = tmp_path / "faq.txt"
    questions.write_text("How do I reset my password?\n\nWhere is my order?\n")
    result = app.test_cli_runner().invoke(args=["cache", "preload", str(questions), "--persona", "faq"])
    assert result.exit_code == 0, result.output
    assert "2 answered and cached" in result.output
    wait_stored(ext, 2)
    _, key = ext.users.create("faq-reader")
    assert chat(app, key, "Where is my order?", persona="faq")["cached"] is True
    again = app.test_cli_runner().invoke(args=["cache", "preload", str(questions), "--persona", "faq"])
    assert "2 already cached" in again.output
    stats = app.test_cli_runner().invoke(args=["cache", "stats"])
    assert '"entries": 2' in stats.output
    assert "deleted 2 entries" in app.test_cli_runner().invoke(args=["cache", "clear"]).output
