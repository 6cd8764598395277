"""REST: batches of one-shot questions (``POST /batch``, ``GET /batch/<id>``); see chatapp.batch."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify

from chatapp.api.errors import json_body
from chatapp.auth import authenticate, load_user
from chatapp.batch import batch_view, create_batch
from chatapp.schemas import BatchCreateSchema, load

bp = Blueprint("batch", __name__)
bp.before_request(authenticate)


@bp.post("/batch")
def create() -> Any:
    data = load(BatchCreateSchema(), json_body())
    view = create_batch(current_app.extensions["chatapp"], load_user(), data["prompts"], data.get("persona"),
                        data.get("params"))
    return jsonify(view), 202, {"Location": f"/api/v1/batch/{view['id']}"}


@bp.get("/batch/<bid>")
def get(bid: str) -> Any:
    return jsonify(batch_view(current_app.extensions["chatapp"], load_user().id, bid))
