"""REST: conversations and their messages (DESIGN.md section 5)."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from chatapp.api.errors import json_body
from chatapp.auth import authenticate, load_user
from chatapp.errors import InvalidRequest
from chatapp.export import export_conversation, parse_format
from chatapp.search import parse_query, search_conversations
from chatapp.schemas import ConversationCreateSchema, ConversationPatchSchema, MessageCreateSchema, load
from chatapp.store import conversation_resource

bp = Blueprint("conversations", __name__)
bp.before_request(authenticate)


def ext() -> Any:
    return current_app.extensions["chatapp"]


def page_size() -> int:
    raw = request.args.get("limit")
    cfg = current_app.config
    if raw is None:
        return int(cfg["DEFAULT_PAGE_SIZE"])
    if not raw.isdigit() or not 1 <= int(raw) <= int(cfg["MAX_PAGE_SIZE"]):
        raise InvalidRequest(f"limit must be a whole number from 1 to {cfg['MAX_PAGE_SIZE']}.", code="invalid_limit")
    return int(raw)


def wants_wait() -> bool:
    return request.args.get("wait", "").lower() in ("1", "true", "yes")


@bp.post("/conversations")
def create_conversation() -> Any:
    data = load(ConversationCreateSchema(), json_body())
    _, fields = ext().chat.new_conversation(load_user(), **data)
    return jsonify(ext().store.create_conversation(fields)), 201


@bp.get("/conversations")
def list_conversations() -> Any:
    if "q" in request.args:  # search: a bounded scan, same page shape (chatapp.search)
        cfg = current_app.config
        query = parse_query(request.args["q"])
        return jsonify(search_conversations(ext().store, load_user().id, query, page_size(),
                                            request.args.get("cursor"), int(cfg["SEARCH_SCAN_LIMIT"]),
                                            int(cfg["SEARCH_SCAN_MESSAGES"])))
    return jsonify(ext().store.list_conversations(load_user().id, page_size(), request.args.get("cursor")))


@bp.get("/conversations/<cid>/export")
def export(cid: str) -> Any:
    user = load_user()
    ext().store.conversation(user.id, cid)  # 404 before the format is looked at
    out = export_conversation(ext().store, user.id, cid, parse_format(request.args.get("format")),
                              int(current_app.config["MAX_EXPORT_MESSAGES"]))
    response = Response(out.body, content_type=out.content_type, headers=out.headers)
    response.headers["Content-Disposition"] = f'attachment; filename="{out.filename}"'
    return response


@bp.get("/conversations/<cid>")
def get_conversation(cid: str) -> Any:
    user = load_user()
    conv = conversation_resource(ext().store.conversation(user.id, cid))
    page = ext().store.list_messages(user.id, cid, int(current_app.config["MAX_PAGE_SIZE"]), None)
    conv["messages"] = page["items"]
    conv["messages_next_cursor"] = page["next_cursor"]
    return jsonify(conv)


@bp.patch("/conversations/<cid>")
def patch_conversation(cid: str) -> Any:
    user = load_user()
    ext().store.conversation(user.id, cid)
    data = load(ConversationPatchSchema(), json_body())
    if "persona" in data:
        persona = ext().catalog.persona(data["persona"])  # 400 for an unknown persona
        if persona is not None:
            data["persona_version"] = ext().persona_versions.pin(persona)
    return jsonify(ext().store.update_conversation(user.id, cid, data))


@bp.delete("/conversations/<cid>")
def delete_conversation(cid: str) -> Any:
    ext().store.delete_conversation(load_user().id, cid)
    return "", 204


@bp.get("/conversations/<cid>/messages")
def list_messages(cid: str) -> Any:
    return jsonify(ext().store.list_messages(load_user().id, cid, page_size(), request.args.get("before")))


@bp.post("/conversations/<cid>/messages")
def send_message(cid: str) -> Any:
    user = load_user()
    conversation = ext().store.conversation(user.id, cid)  # 404 before validation says anything about it
    data = load(MessageCreateSchema(), json_body())
    accepted = ext().chat.send(user, conversation_id=cid, content=data["content"],
                               client_message_id=data.get("client_message_id"), params=data.get("params"),
                               conversation=conversation)
    user_message, reply = ext().store.message_views(user.id, [accepted.user_message_id, accepted.message_id])
    if wants_wait():
        reply = ext().chat.wait(user, accepted.message_id)
        if reply["state"] in ("done", "failed", "cancelled"):
            return jsonify({"user_message": user_message, "message_id": accepted.message_id,
                            "state": reply["state"], "message": reply})
    return jsonify({"user_message": user_message, "message_id": accepted.message_id, "state": reply["state"],
                    "message": reply}), 202


@bp.get("/conversations/<cid>/messages/<mid>")
def get_message(cid: str, mid: str) -> Any:
    store = ext().store
    return jsonify(store.message_view(store.message(load_user().id, mid, cid)))


@bp.post("/conversations/<cid>/messages/<mid>/cancel")
def cancel_message(cid: str, mid: str) -> Any:
    json_body()
    return jsonify(ext().chat.cancel(load_user(), mid, cid))



