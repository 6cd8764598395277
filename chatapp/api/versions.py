"""REST: regenerate the last reply (keeping the old one as a version) and rate replies."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify

from chatapp.api.errors import json_body
from chatapp.auth import authenticate, load_user
from chatapp.feedback import give_feedback
from chatapp.regenerate import regenerate
from chatapp.schemas import FeedbackSchema, RegenerateSchema, load

bp = Blueprint("versions", __name__)
bp.before_request(authenticate)


@bp.post("/conversations/<cid>/regenerate")
def regenerate_reply(cid: str) -> Any:
    """202 with the new (queued) reply; ``replaces`` names the version it displaced."""
    ext = current_app.extensions["chatapp"]
    user = load_user()
    ext.store.conversation(user.id, cid)  # 404 before validation says anything about it
    data = load(RegenerateSchema(), json_body())
    accepted = regenerate(ext, user, cid, data.get("message_id"), data.get("params"))
    reply = ext.store.message_view(ext.store.message(user.id, accepted.message_id))
    return jsonify({"message_id": accepted.message_id, "state": reply["state"], "replaces": reply.get("replaces"),
                    "message": reply}), 202


@bp.post("/conversations/<cid>/messages/<mid>/feedback")
def feedback(cid: str, mid: str) -> Any:
    ext = current_app.extensions["chatapp"]
    user = load_user()
    ext.store.message(user.id, mid, cid)  # 404 first, as everywhere
    data = load(FeedbackSchema(), json_body())
    return jsonify(give_feedback(ext, user, cid, mid, data["rating"], data.get("comment", "")))
