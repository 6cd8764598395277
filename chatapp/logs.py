"""Logging: one JSON object a line (``CHATAPP_LOG_FORMAT=json``, the default for the web and
worker processes) or plain text, with the request id, user id and reply ids attached.

Never logged: API keys, provider keys, message text. Ids are enough to find a record.
"""
from __future__ import annotations

import contextvars
import json
import logging
import secrets
import time
from typing import Any

from flask import Flask, g, has_request_context, request

#: ids of the reply a worker thread is generating (contextvars are per thread)
reply_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("reply_context", default={})

FIELDS = ("request_id", "user_id", "conversation_id", "message_id", "job_id")


class ContextFilter(logging.Filter):
    """Adds the request's and the reply's ids to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if has_request_context():
            record.request_id = g.get("request_id")
            user = g.get("user")
            record.user_id = user.id if user is not None else None
        for key, value in reply_context.get().items():
            setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value:
                out[name] = value
        # measurements passed as ``extra={"data": {...}}`` (numbers and ids, never text)
        data = getattr(record, "data", None)
        if isinstance(data, dict):
            out.update({k: v for k, v in data.items() if k not in out})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(fmt: str, level: str = "INFO") -> None:
    """Install one handler on the root logger (replacing gunicorn's and basicConfig's)."""
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    for name in ("chatapp", "workers", "plugins", "rq.worker"):
        logging.getLogger(name).setLevel(level)


def init_request_ids(app: Flask) -> None:
    """Take the platform's request id (Heroku and Render send X-Request-ID) or make one; echo it."""

    @app.before_request
    def request_id() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming[:100] if incoming else secrets.token_hex(8)

    @app.after_request
    def echo_request_id(response: Any) -> Any:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        return response
