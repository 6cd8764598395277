"""Structured personas: each step is its own provider call, streamed as a labelled part."""
from __future__ import annotations

import types

import pytest

from chatapp import Persona, Step, hookimpl
from tests.conftest import InThreadWorker, LiveServer, close_app, make_app
from tests.wsclient import WS, assert_gap_free, text_of

STEPS = [Step("analyze", "Analyze", "Restate the problem."), Step("think", "Think", "Reason it through."),
         Step("answer", "Answer", "Give the answer.")]


@pytest.fixture()
def steps_app(app_config):
    seen = []
    module = types.ModuleType("stepper")
    module.register_personas = hookimpl(lambda config: [Persona(name="stepper", system_prompt="Be methodical.",
                                                                steps=STEPS)])

    def after(request, result):
        seen.append(result)

    module.after_generation = hookimpl(after)
    app = make_app({**app_config, "CACHE_ENABLED": False}, extra_plugins=(module,))
    ext = app.extensions["chatapp"]
    worker = InThreadWorker(ext)
    live = LiveServer(app)
    yield ext, live, seen
    live.stop()
    worker.stop()
    close_app(app)


def test_each_step_streams_as_a_labelled_part(steps_app):
    ext, live, _ = steps_app
    key = ext.users.create("methodical")[1]
    ws = WS(live.ws_url, key)
    ws.send({"type": "send", "conversation_id": None, "content": "why is the sky blue", "persona": "stepper"})
    mid = ws.recv()["message_id"]
    frames = ws.reply_frames(mid)
    assert_gap_free(frames)
    deltas = [f for f in frames if f["type"] == "delta"]
    order = [f["part"] for f in deltas]
    assert order == sorted(order, key=["analyze", "think", "answer"].index) and set(order) == {"analyze", "think",
                                                                                          "answer"}
    content = ext.redis.hget(f"{ext.prefix}msg:{mid}", "content")
    assert text_of(frames) == content
    assert content.startswith("**Analyze**\n\nEcho (stepper): why is the sky blue")
    assert "\n\n**Think**\n\n" in content and "\n\n**Answer**\n\n" in content
    assert frames[-1]["type"] == "done" and frames[-1]["usage"]["output_tokens"] > 0


def test_later_steps_see_earlier_parts():
    from chatapp.models import ChatRequest, Message
    from workers.jobs import parts_of

    base = ChatRequest("m", "c", "u", "echo", "echo-1", [Message("system", "S"), Message("user", "Q")],
                       persona=Persona(name="p", steps=STEPS))
    parts = parts_of(base)
    assert [s.name for s, _ in parts] == ["analyze", "think", "answer"]
    second = parts[1][1].with_previous("**Analyze**\n\nrestated")
    assert [m.role for m in second.messages] == ["system", "user", "assistant", "system"]
    assert second.messages[2].content == "**Analyze**\n\nrestated"
    assert 'Write only part 2, "Think": Reason it through.' in second.messages[-1].content
    assert parts_of(ChatRequest("m", "c", "u", "echo", "e", [])) [0][0] is None
