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


def test_each_reply_run_logs_its_provider_latency_without_text(app_config):
    from tests.conftest import app_with_worker

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    jobs_log = logging.getLogger("workers.jobs")
    jobs_log.addHandler(handler)
    old_level = jobs_log.level
    jobs_log.setLevel(logging.INFO)
    try:
        with app_with_worker(app_config) as (_app, ext):
            user = ext.users.create("logger")[0]
            acc = ext.chat.send(user, conversation_id=None, content="a very private question")
            ext.relay.wait(acc.message_id, 10)
    finally:
        jobs_log.removeHandler(handler)
        jobs_log.setLevel(old_level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    done = [line for line in lines if line.get("outcome") == "done"]
    assert done, lines
    line = done[0]
    assert line["message_id"] == acc.message_id and line["conversation_id"] == acc.conversation_id
    assert line["provider"] == "echo" and line["provider_latency_ms"] >= 0 and line["output_tokens"] > 0
    assert "private" not in stream.getvalue()
