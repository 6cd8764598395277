"""The websocket endpoint ``/ws``: authenticated and Origin-checked before the 101 upgrade."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, current_app, g, request
from flask_sock import Sock

from chatapp.auth import load_user, redeem_ticket
from chatapp.config import split_list
from chatapp.errors import Forbidden, RateLimited, Unauthorized
from chatapp.socket_session import SocketSession

bp = Blueprint("ws", __name__)
sock = Sock()


@bp.before_request
def authenticate_upgrade() -> None:
    """flask-sock answers 101 before the handler runs, so refuse here: 403 or 401, never 101."""
    origin = request.headers.get("Origin")
    if origin:
        allowed = split_list(current_app.config.get("ALLOWED_ORIGINS"))
        same_host = urlsplit(origin).netloc.lower() == request.host.lower()
        if not (same_host or "*" in allowed or origin.rstrip("/") in [a.rstrip("/") for a in allowed]):
            raise Forbidden("This Origin may not open a websocket here; see CHATAPP_ALLOWED_ORIGINS.",
                            code="origin_not_allowed")
    ticket = request.args.get("ticket")
    if ticket:
        ext = current_app.extensions["chatapp"]
        user_id = redeem_ticket(ext.redis, ext.prefix, ticket)
        user = ext.users.get(user_id) if user_id else None
        if user is None:
            raise Unauthorized("This websocket ticket is unknown, used or expired; get a new one from "
                               "POST /api/v1/ws-tickets.", code="invalid_ticket")
        g.user = user
    user = load_user()
    limit = int(current_app.config["MAX_SOCKETS_PER_USER"])
    if limit and current_app.extensions["chatapp"].sockets.count(user.id) >= limit:
        raise RateLimited(f"At most {limit} open websockets per user; close one (one socket carries any "
                          "number of conversations).", code="too_many_sockets", retry_after=5)


@sock.route("/ws", bp=bp)
def websocket(ws: Any) -> None:
    SocketSession(ws, load_user(), current_app.extensions["chatapp"]).run()


def init_app(app: Flask) -> None:
    sock.init_app(app)
    app.register_blueprint(bp)
