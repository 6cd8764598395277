"""JSON logs carry the request and reply ids, never keys or message text."""
from __future__ import annotations

import io
import json
import logging

from chatapp.logs import ContextFilter, JsonFormatter, reply_context
from tests.conftest import auth


def capture():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("chatapp.test_logs")
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream


def test_request_id_is_echoed_and_logged_with_the_user(app, client, user_key):
    logger, stream = capture()
    r = client.get("/api/v1/conversations", headers={**auth(user_key), "X-Request-ID": "req-123"})
    assert r.headers["X-Request-ID"] == "req-123"
    assert len(client.get("/healthz").headers["X-Request-ID"]) == 16  # made up when none came in
    with app.test_request_context("/x", headers={"X-Request-ID": "req-456"}):
        app.preprocess_request()
        from chatapp.auth import load_user
        from flask import g

        g.user = app.extensions["chatapp"].users.authenticate(user_key)
        load_user()
        logger.info("handled")
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["request_id"] == "req-456" and line["user_id"].startswith("u_") and line["msg"] == "handled"
    assert user_key not in stream.getvalue()


def test_worker_records_carry_the_reply_id():
    logger, stream = capture()
    token = reply_context.set({"message_id": "m_abc"})
    try:
        logger.warning("provider slow")
    finally:
        reply_context.reset(token)
    line = json.loads(stream.getvalue())
    assert line["message_id"] == "m_abc" and line["level"] == "warning" and line["ts"].endswith("Z")
