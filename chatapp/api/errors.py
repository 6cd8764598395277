"""Every error leaves as the canonical body; nothing else (no HTML, no traceback) reaches a client."""
from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from chatapp.errors import ChatAppError, InvalidRequest, TooLarge, Unavailable
from chatapp.schemas import parse_json

log = logging.getLogger("chatapp.api")

HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type", 429: "rate_limited",
}


def error_response(err: ChatAppError) -> Any:
    response = jsonify(err.to_dict())
    response.status_code = err.status
    for name, value in err.headers.items():
        response.headers[name] = value
    return response


def json_body() -> dict[str, Any]:
    """The request's JSON object; a clear 400 for anything else (empty body means {})."""
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if limit and (request.content_length or 0) > limit:
        raise TooLarge(f"The request body is larger than {limit} bytes.", details={"limit_bytes": limit})
    raw = request.get_data(cache=True)
    if not raw:
        return {}
    data = parse_json(raw)  # whatever the content type: curl -d sends no JSON content type
    if not isinstance(data, dict):
        raise InvalidRequest("Send a JSON object.", code="invalid_json")
    return data


def init_error_handlers(app: Flask) -> None:
    @app.errorhandler(ChatAppError)
    def chatapp_error(err: ChatAppError) -> Any:
        return error_response(err)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> Any:
        status = err.code or 500
        message = err.description or "Request failed."
        if status == 413:
            message = "The request body is too large."
        return error_response(ChatAppError(message, code=HTTP_CODES.get(status, "http_error"), status=status))

    @app.errorhandler(redis.RedisError)
    def redis_error(err: redis.RedisError) -> Any:
        log.warning("Redis unavailable during %s %s: %s", request.method, request.path, type(err).__name__)
        return error_response(Unavailable(headers={"Retry-After": "2"}))

    @app.errorhandler(Exception)
    def unexpected(err: Exception) -> Any:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(ChatAppError())
