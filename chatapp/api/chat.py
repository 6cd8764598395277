"""REST: the one-shot ``POST /api/v1/chat`` that many existing chat clients speak."""
from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, current_app, jsonify

from chatapp.api.errors import json_body
from chatapp.auth import authenticate, load_user
from chatapp.errors import ChatAppError, ProviderTimeout, status_for_code
from chatapp.schemas import ChatSchema, load

bp = Blueprint("chat", __name__)
bp.before_request(authenticate)


@bp.post("/chat")
def one_shot() -> Any:
    started = time.monotonic()
    ext = current_app.extensions["chatapp"]
    user = load_user()
    data = load(ChatSchema(), json_body())
    params = {k: data[k] for k in ("max_tokens", "temperature", "cache") if k in data}
    accepted = ext.chat.send(
        user, conversation_id=data.get("conversation_id"), content=data["message"], persona=data.get("persona"),
        params=params, system_prompt=data.get("system_prompt", ""),
    )
    reply = ext.chat.wait(user, accepted.message_id)
    ids = {"conversation_id": accepted.conversation_id, "message_id": accepted.message_id}
    if reply["state"] == "failed":
        err = reply.get("error") or {}
        code = err.get("code", "generation_failed")
        raise ChatAppError(err.get("message"), code=code, status=status_for_code(code),
                           details={**(err.get("details") or {}), **ids})
    if reply["state"] not in ("done", "cancelled"):
        raise ProviderTimeout("The reply is still being written; fetch it later with GET "
                              f"/api/v1/conversations/{accepted.conversation_id}/messages/{accepted.message_id}.",
                              code="reply_timeout", details=ids)
    return jsonify({
        **ids,
        "message": reply["content"],
        "cost_usd": reply["cost_usd"],
        "cached": reply["cached"],
        "elapsed_s": round(time.monotonic() - started, 3),
        "usage": reply["usage"],
        "finish_reason": reply["finish_reason"],
    })
