"""CORS for browser clients on other origins: an allowlist, ``CHATAPP_CORS_ORIGINS``.

Empty (the default) means no CORS headers at all: only same-origin pages (our own web client)
can read responses. Listed origins (comma-separated, ``*`` for any) get, on ``/api/v1/*`` and
``/openapi.json``:

- preflight ``OPTIONS`` answered 204 here, before the blueprints' key check (a browser's
  preflight never carries the key), with the route's methods and the ``Authorization`` and
  ``Content-Type`` request headers;
- ``Access-Control-Allow-Origin`` on the actual responses, with ``Retry-After`` and
  ``X-Request-ID`` exposed.

Other origins get nothing: their preflight falls through to the normal answer (401, no CORS
headers), so the browser refuses. No credentials mode: the API uses bearer keys, not cookies.
"""
from __future__ import annotations

from typing import Any

from flask import Flask, current_app, request

from chatapp.config import split_list

CORS_PATHS = ("/api/v1/", "/openapi.json")
ALLOW_HEADERS = "Authorization, Content-Type, X-Request-ID"
EXPOSE_HEADERS = "Retry-After, X-Request-ID"
MAX_AGE_S = 600


def allowed_origin(origin: str | None) -> str | None:
    """The value for ``Access-Control-Allow-Origin`` if ``origin`` is allowed, else None."""
    allowed = [a.rstrip("/") for a in split_list(current_app.config.get("CORS_ORIGINS"))]
    if not origin or not allowed:
        return None
    if "*" in allowed:
        return "*"
    return origin if origin.rstrip("/") in allowed else None


def _applies() -> bool:
    return bool(current_app.config.get("CORS_ORIGINS")) and request.path.startswith(CORS_PATHS)


def answer_preflight() -> Any:
    """``before_request``: a 204 for an allowed origin's preflight of an existing route."""
    if request.method != "OPTIONS" or not request.headers.get("Access-Control-Request-Method") or not _applies():
        return None
    origin = allowed_origin(request.headers.get("Origin"))
    if origin is None:
        return None
    if request.url_rule is None:  # no such route: let routing answer 404
        return None
    # every rule at this path (GET and POST of one path may be different views)
    methods = set(current_app.create_url_adapter(request).allowed_methods())  # type: ignore[union-attr]
    response = current_app.response_class(status=204)
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Allow-Methods"] = ", ".join(sorted(methods - {"HEAD", "OPTIONS"}))
    response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
    response.headers["Access-Control-Max-Age"] = str(MAX_AGE_S)
    response.vary.add("Origin")
    return response


def add_headers(response: Any) -> Any:
    """``after_request``: the allow-origin header on an allowed origin's actual responses."""
    if not _applies():
        return response
    response.vary.add("Origin")  # a shared cache must not give one origin's answer to another
    origin = allowed_origin(request.headers.get("Origin"))
    if origin is not None and "Access-Control-Allow-Origin" not in response.headers:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    return response


def init_app(app: Flask) -> None:
    """Register the preflight answer (ahead of every blueprint's key check) and the headers."""
    app.before_request(answer_preflight)
    app.after_request(add_headers)
