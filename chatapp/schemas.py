"""Request validation at the edge (marshmallow). Unknown fields are rejected everywhere."""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from chatapp.errors import InvalidRequest, TooLarge

CACHE_MODES = ("use", "refresh", "skip")
ID_PATTERN = validate.Regexp(r"^[A-Za-z0-9_.:\-]{1,100}$", error="Use 1-100 letters, digits or _ . : -")


class StrictNumber(fields.Float):
    """A JSON number: refuses strings and booleans that marshmallow's Float would coerce."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValidationError("Must be a number.")
        return super()._deserialize(value, attr, data, **kwargs)


class Base(Schema):
    class Meta:
        unknown = RAISE


class ParamsSchema(Base):
    temperature = StrictNumber(validate=validate.Range(0, 2))
    max_tokens = fields.Integer(strict=True, validate=validate.Range(min=1))
    top_p = StrictNumber(validate=validate.Range(0, 1))
    cache = fields.String(validate=validate.OneOf(CACHE_MODES))


class ConversationCreateSchema(Base):
    title = fields.String(validate=validate.Length(max=200))
    persona = fields.String(validate=validate.Length(min=1, max=100))
    provider = fields.String(validate=validate.Length(min=1, max=100))
    model = fields.String(validate=validate.Length(min=1, max=200))
    params = fields.Nested(ParamsSchema)


class ConversationPatchSchema(Base):
    title = fields.String(validate=validate.Length(max=200))
    persona = fields.String(validate=validate.Length(min=1, max=100))

    @validates_schema
    def not_empty(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("Send at least one of: title, persona.")


class MessageCreateSchema(Base):
    content = fields.String(required=True)
    client_message_id = fields.String(validate=ID_PATTERN)
    params = fields.Nested(ParamsSchema)


class ChatSchema(Base):
    message = fields.String(required=True)
    conversation_id = fields.String(allow_none=True, validate=validate.Length(max=100))
    persona = fields.String(validate=validate.Length(min=1, max=100))
    system_prompt = fields.String(validate=validate.Length(max=32 * 1024))
    max_tokens = fields.Integer(strict=True, validate=validate.Range(min=1))
    temperature = StrictNumber(validate=validate.Range(0, 2))
    cache = fields.String(validate=validate.OneOf(CACHE_MODES))


class SendFrame(Base):
    type = fields.String(required=True)
    conversation_id = fields.String(required=True, allow_none=True, validate=validate.Length(max=100))
    content = fields.String(required=True)
    client_message_id = fields.String(validate=ID_PATTERN)
    persona = fields.String(validate=validate.Length(min=1, max=100))
    params = fields.Nested(ParamsSchema)


class SubscribeFrame(Base):
    type = fields.String(required=True)
    message_id = fields.String(required=True, validate=validate.Length(min=1, max=100))
    # bounded: beyond 2**64-1 it is no Redis stream id, and the relay's replay would fail forever
    after_seq = fields.Integer(strict=True, load_default=0, validate=validate.Range(min=0, max=2**63 - 1))


class CancelFrame(Base):
    type = fields.String(required=True)
    message_id = fields.String(required=True, validate=validate.Length(min=1, max=100))


class PingFrame(Base):
    type = fields.String(required=True)


FRAME_SCHEMAS: dict[str, Schema] = {
    "send": SendFrame(), "subscribe": SubscribeFrame(), "cancel": CancelFrame(), "ping": PingFrame(),
}


def load(schema: Schema, data: Any) -> dict[str, Any]:
    """Validate ``data``; a 400 ``validation_error`` lists what is wrong, field by field."""
    if not isinstance(data, Mapping):
        raise InvalidRequest("Send a JSON object.", code="invalid_json")
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise InvalidRequest("Some fields are not valid; see details.", code="validation_error",
                             details={"fields": exc.messages}) from exc


_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json(raw: str | bytes, what: str = "The body") -> Any:
    """Parse JSON text from a client; a 400 ``invalid_json`` for anything that is not JSON text
    (invalid UTF-8, nesting too deep to parse) or that holds a lone surrogate escape such as
    ``"\\ud800"``: Python decodes that to a string no UTF-8 encoder (Redis, logs, hashes) accepts."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise InvalidRequest(f"{what} is not valid JSON.", code="invalid_json") from None
    # only an escape can make one (in any encoding json.loads detects, "\\" holds the byte 0x5C)
    if ("\\" in raw if isinstance(raw, str) else b"\\" in raw) and _has_lone_surrogate(data):
        raise InvalidRequest(f"{what} holds a lone UTF-16 surrogate escape (such as \\ud800), which is not "
                             "Unicode text; escape characters beyond U+FFFF as a pair, or send them as UTF-8.",
                             code="invalid_json")
    return data


def _has_lone_surrogate(data: Any) -> bool:
    stack = [data]  # no recursion: the document may be nested as deep as the parser allows
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def check_content(content: str, max_bytes: int, field: str = "content") -> str:
    """Refuse empty or oversized message text (413 beyond ``max_bytes`` of UTF-8)."""
    if not content.strip():
        raise InvalidRequest(f"'{field}' is empty.", code="empty_content")
    size = len(content.encode("utf-8"))
    if size > max_bytes:
        raise TooLarge(f"'{field}' is {size} bytes; the limit is {max_bytes}.", code="content_too_large",
                       details={"limit_bytes": max_bytes, "size_bytes": size})
    return content


def check_params(params: dict[str, Any], max_tokens_limit: int) -> dict[str, Any]:
    if params.get("max_tokens", 0) > max_tokens_limit:
        raise InvalidRequest(f"max_tokens may be at most {max_tokens_limit}.", code="validation_error",
                             details={"fields": {"max_tokens": [f"At most {max_tokens_limit}."]}})
    return params


class RegenerateSchema(Base):
    # the reply the client means to replace: a 409 instead of replacing a newer one
    message_id = fields.String(validate=ID_PATTERN)
    params = fields.Nested(ParamsSchema)


class FeedbackSchema(Base):
    rating = fields.String(required=True, validate=validate.OneOf(("up", "down")))
    comment = fields.String(validate=validate.Length(max=2000))


class BatchCreateSchema(Base):
    # the count cap (MAX_BATCH_PROMPTS, 413) and each prompt's size are checked in chatapp.batch
    prompts = fields.List(fields.String(), required=True,
                          validate=validate.Length(min=1, error="Send at least one prompt."))
    persona = fields.String(validate=validate.Length(min=1, max=100))
    params = fields.Nested(ParamsSchema)
