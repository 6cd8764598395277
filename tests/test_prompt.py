"""Prompt rendering: which stored turns reach a prompt, and how the token budget cuts them."""
from __future__ import annotations

import time

from chatapp.errors import ChatAppError
from chatapp.models import CANCELLED, DONE, FAILED, GenerationResult, Message, Persona
from chatapp.prompt import estimate_prompt_tokens, estimate_tokens, render_messages

PERSONA = Persona(name="p", system_prompt="Be brief.")  # 3 tokens


def test_budget_keeps_the_newest_turns_oldest_first():
    history = [Message("user", "a" * 40), Message("assistant", "b" * 40), Message("user", "c" * 8)]  # 10, 10, 2
    assert render_messages(PERSONA, history, None, 3 + 2 + 10) == [
        Message("system", "Be brief."), Message("assistant", "b" * 40), Message("user", "c" * 8)]
    assert render_messages(PERSONA, history, None, 3 + 2 + 10 - 1)[1:] == [Message("user", "c" * 8)]
    assert render_messages(PERSONA, history, None, 1000)[1:] == history


def test_the_newest_turn_is_kept_even_over_budget():
    history = [Message("user", "old")]
    assert render_messages(PERSONA, history, "x" * 4000, 10)[1:] == [Message("user", "x" * 4000)]
    assert render_messages(None, history, None, 0, default_prompt="") == history


def test_empty_turns_cost_one_token():
    assert estimate_tokens("") == 1 and estimate_tokens("abcd") == 1 and estimate_tokens("abcde") == 2
    messages = [Message("user", ""), Message("assistant", "abcde"), Message("user", "x" * 401)]
    assert estimate_prompt_tokens(messages) == sum(estimate_tokens(m.content) for m in messages) == 1 + 2 + 101


def _reply(ext, user, cid, content, state, text):
    """A stored turn: the user's message and a reply that ended in ``state`` with ``text``."""
    mid = ext.chat.send(user, conversation_id=cid, content=content).message_id
    ext.redis.lpop(f"rq:queue:{ext.config['QUEUE_NAME']}")  # run by hand, not by a worker
    token = f"t{time.monotonic_ns()}"
    assert ext.replies.claim(mid, token).status == "ok"
    if text:
        ext.replies.append(mid, token, [("delta", {"text": text}, text)])
    error = ChatAppError().to_dict()["error"] if state == FAILED else None
    ext.replies.finish(mid, token, GenerationResult(mid, state, text, finish_reason="stop", error=error))
    return mid


def test_history_leaves_out_failed_unfinished_and_empty_replies(ext):
    user = ext.users.create("historian")[0]
    cid = ext.chat.send(user, conversation_id=None, content="q0").conversation_id
    ext.redis.lpop(f"rq:queue:{ext.config['QUEUE_NAME']}")  # q0's reply stays queued: unfinished
    _reply(ext, user, cid, "q1", DONE, "a1")
    _reply(ext, user, cid, "q2", FAILED, "half an answer")
    _reply(ext, user, cid, "q3", CANCELLED, "")
    _reply(ext, user, cid, "q4", CANCELLED, "a4 (stopped)")
    history = ext.store.history(cid)
    assert history == [Message("user", "q0"), Message("user", "q1"), Message("assistant", "a1"),
                       Message("user", "q2"), Message("user", "q3"), Message("user", "q4"),
                       Message("assistant", "a4 (stopped)")]
    # the budget counts only turns that can be used: a long failed reply takes none of it
    _reply(ext, user, cid, "q5", FAILED, "x" * 4000)
    assert ext.store.history(cid, budget_tokens=3)[-2:] == [Message("assistant", "a4 (stopped)"), Message("user", "q5")]
