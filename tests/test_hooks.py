"""One test per hook of chatapp/hookspecs.py, through a test plugin registered like any other."""
from __future__ import annotations

import os
import time
import types

import flask
import pytest

from chatapp import Chunk, ModelInfo, Persona, Provider, Usage, hookimpl
from chatapp.plugin_manager import make_plugin_manager
from tests.conftest import InThreadWorker, auth, close_app, make_app
from tests.plugins import recorder


def plugin_module(name, **hooks):
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


@pytest.fixture()
def build(app_config):
    made = []

    def _build(*plugins, **config):
        recorder.reset()
        application = make_app({**app_config, **config}, extra_plugins=plugins)
        made.append(application)
        return application, application.extensions["chatapp"]

    yield _build
    for application in made:
        close_app(application)


class ShoutProvider(Provider):
    def stream(self, request, context):
        yield Chunk(text=request.prompt_text.upper())
        yield Chunk(usage=Usage(1, 1), finish_reason="stop", meta={"shouted": True})


def test_register_providers(build):
    shout = plugin_module("shout", register_providers=lambda config: [
        ShoutProvider(id="shout", models=[ModelInfo("loud-1")], default_model="loud-1")])
    app, ext = build(shout)
    key = ext.users.create("p")[1]
    w = InThreadWorker(ext)
    try:
        c = app.test_client()
        conv = c.post("/api/v1/conversations", json={"provider": "shout"}, headers=auth(key)).json
        reply = c.post(f"/api/v1/conversations/{conv['id']}/messages?wait=true", json={"content": "hey"},
                       headers=auth(key)).json["message"]
    finally:
        w.stop()
    assert reply["content"] == "HEY" and reply["provider"] == "shout" and reply["model"] == "loud-1"
    ids = [p["id"] for p in c.get("/api/v1/providers", headers=auth(key)).json["items"]]
    assert "shout" in ids and "echo" in ids


def test_register_personas(build):
    pirate = plugin_module("pirate", register_personas=lambda config: [
        Persona(name="pirate", system_prompt="Talk like a pirate.", description="Arr", greeting="Ahoy!")])
    app, ext = build(pirate)
    key = ext.users.create("q")[1]
    got = app.test_client().get("/api/v1/personas/pirate", headers=auth(key)).json
    assert got["greeting"] == "Ahoy!" and got["display_name"] == "pirate"
    w = InThreadWorker(ext)
    try:
        r = app.test_client().post("/api/v1/chat", json={"message": "yo", "persona": "pirate"}, headers=auth(key))
    finally:
        w.stop()
    assert r.json["message"] == "Echo (pirate): yo"


def test_get_cached_reply_answers_without_a_job(build):
    app, ext = build(recorder)
    recorder.settings["cached"] = {"what is chatapp?": "A chat backend."}
    key = ext.users.create("c")[1]
    r = app.test_client().post("/api/v1/chat", json={"message": "what is chatapp?"}, headers=auth(key))
    assert r.status_code == 200 and r.json["message"] == "A chat backend." and r.json["cached"] is True
    assert r.json["cost_usd"] == 0 and ext.queue.depth() == 0  # answered without any job
    w = InThreadWorker(ext)  # after_generation still runs once for the hit, from the outbox
    try:
        assert recorder.after_calls(r.json["message_id"]) == [(r.json["message_id"], "done", "A chat backend.", True)]
    finally:
        w.stop()
    conv = r.json["conversation_id"]
    r2 = app.test_client().post(f"/api/v1/conversations/{conv}/messages", headers=auth(key),
                                json={"content": "what is chatapp?", "params": {"cache": "skip"}})
    assert r2.status_code == 202 and r2.json["state"] == "queued"  # skip: not answered from the cache
    assert ("get_cached_reply", r2.json["message_id"]) not in recorder.calls and ext.queue.depth() == 1


def test_before_generation_can_refuse_and_nothing_is_written(build):
    app, ext = build(recorder)
    recorder.settings["refuse"] = True
    key = ext.users.create("b")[1]
    r = app.test_client().post("/api/v1/chat", json={"message": "hi"}, headers=auth(key))
    assert r.status_code == 402 and r.json["error"]["code"] == "budget_exhausted"
    assert r.json["error"]["details"] == {"remaining_usd": 0}
    assert app.test_client().get("/api/v1/conversations", headers=auth(key)).json["items"] == []


def test_price_generation_first_result_wins_and_is_stored(build):
    app, ext = build(recorder)
    recorder.settings["price_micros"] = 2500
    key = ext.users.create("m")[1]
    w = InThreadWorker(ext)
    try:
        r = app.test_client().post("/api/v1/chat", json={"message": "price me"}, headers=auth(key)).json
    finally:
        w.stop()
    assert r["cost_usd"] == 0.0025
    conv = app.test_client().get(f"/api/v1/conversations/{r['conversation_id']}", headers=auth(key)).json
    assert conv["cost_usd"] == 0.0025


def test_after_generation_runs_once_per_reply(build):
    app, ext = build(recorder)
    key = ext.users.create("a")[1]
    w = InThreadWorker(ext)
    try:
        r = app.test_client().post("/api/v1/chat", json={"message": "once"}, headers=auth(key)).json
        calls = recorder.after_calls(r["message_id"])
        # and for a reply stopped while still queued (it never reached a worker)
        w.worker.stop_soon()
        w.thread.join(10)
        c = app.test_client()
        queued = c.post(f"/api/v1/conversations/{r['conversation_id']}/messages", json={"content": "stop me"},
                        headers=auth(key)).json
        c.post(f"/api/v1/conversations/{r['conversation_id']}/messages/{queued['message_id']}/cancel",
               headers=auth(key))
        stopped = recorder.after_calls(queued["message_id"])
    finally:
        w.stop()
    assert calls == [(r["message_id"], "done", "Echo (assistant): once", False)]
    assert stopped == [(queued["message_id"], "cancelled", "", False)]


def test_after_generation_batch_gets_each_reply_once_after_its_after_generation(build):
    app, ext = build(recorder)
    key = ext.users.create("a")[1]
    c = app.test_client()
    conv = c.post("/api/v1/conversations", json={}, headers=auth(key)).json["id"]
    mids = [c.post(f"/api/v1/conversations/{conv}/messages", json={"content": f"turn {i}"}, headers=auth(key))
            .json["message_id"] for i in range(3)]
    w = InThreadWorker(ext)  # started after the sends: the three finish close together
    try:
        for mid in mids:
            recorder.after_calls(mid, settle=0)
        time.sleep(0.5)
    finally:
        w.stop()
    batches = [(i, args) for i, (name, args) in enumerate(recorder.calls) if name == "after_generation_batch"]
    seen = [reply for _i, batch in batches for reply in batch]
    assert sorted(m for m, _s, _t in seen) == sorted(mids)  # each reply in exactly one batch
    assert all(state == "done" and text.startswith("Echo") for _m, state, text in seen)
    for i, batch in batches:  # after after_generation ran for every reply in it
        earlier = {args[0] for name, args in recorder.calls[:i] if name == "after_generation"}
        assert {m for m, _s, _t in batch} <= earlier


def test_register_blueprints(build):
    bp = flask.Blueprint("hello_plugin", __name__)
    bp.add_url_rule("/hello-plugin", "hello", lambda: {"hello": "plugin"})
    app, _ = build(plugin_module("hello", register_blueprints=lambda: [bp]))
    assert app.test_client().get("/hello-plugin").json == {"hello": "plugin"}


def test_disabled_plugins_are_not_loaded(build):
    app, ext = build(DISABLED_PLUGINS="plugins.personas")
    assert "plugins.personas" not in [p["name"] for p in app.test_client().get("/-/plugins").json["items"]]
    assert ext.catalog.personas == {}


def test_hookspecs_all_documented():
    from chatapp import hookspecs

    pm = make_plugin_manager()
    names = [n for n in dir(pm.hook) if not n.startswith("_")]
    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "plugin_hooks.md")).read()
    for name in names:
        assert getattr(hookspecs, name).__doc__, name
        assert f"`{name}" in doc, f"{name} missing from docs/plugin_hooks.md"


def test_register_commands(build):
    import click

    @click.command("hello-plugin")
    def hello():
        click.echo("hello from a plugin")

    app, _ = build(plugin_module("cmds", register_commands=lambda cli: cli.add_command(hello)))
    result = app.test_cli_runner().invoke(args=["hello-plugin"])
    assert result.exit_code == 0 and result.output == "hello from a plugin\n"


def test_generation_refused_after_before_generation(build):
    app, ext = build(recorder, MAX_ACTIVE_GENERATIONS=1)
    user, key = ext.users.create("r")
    c = app.test_client()
    conv = c.post("/api/v1/conversations", json={}, headers=auth(key)).json["id"]
    assert c.post(f"/api/v1/conversations/{conv}/messages", json={"content": "a"}, headers=auth(key)).status_code == 202
    # the active-replies limit is checked atomically by the send script, after before_generation
    assert c.post(f"/api/v1/conversations/{conv}/messages", json={"content": "b"}, headers=auth(key)).status_code == 429
    vetted = [mid for name, mid in recorder.calls if name == "before_generation"]
    refused = [args for name, args in recorder.calls if name == "generation_refused"]
    assert refused == [(vetted[-1], "too_many_generations")]
    # a plugin's own refusal is told to every plugin, so the others can release what they held
    recorder.settings["refuse"] = True
    assert c.post("/api/v1/chat", json={"message": "c"}, headers=auth(key)).status_code == 402
    refused = [args for name, args in recorder.calls if name == "generation_refused"]
    assert refused[-1] == (recorder.calls[-2][1], "budget_exhausted") and len(refused) == 2
    # an accepted send is never reported refused
    assert all(mid != vetted[0] for mid, _ in refused)
