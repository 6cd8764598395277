"""Conversation export (``GET /conversations/<cid>/export?format=json|md|csv``).

Messages are read oldest first in pipelined pages of ``PAGE`` and capped at
``MAX_EXPORT_MESSAGES``. A cut export says so: ``truncated`` in JSON, a note in Markdown, and,
since a CSV file has no place for a note, an ``X-Export-Truncated`` header on every format.
"""
from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from chatapp.errors import InvalidRequest
from chatapp.ids import iso, now_ms
from chatapp.store import Store, conversation_resource

#: format -> (content type, file extension)
FORMATS = {
    "json": ("application/json; charset=utf-8", "json"),
    "md": ("text/markdown; charset=utf-8", "md"),
    "csv": ("text/csv; charset=utf-8", "csv"),
}
CSV_COLUMNS = ("message_id", "role", "created_at", "state", "content", "cost_usd", "cached", "prompt_tokens",
               "completion_tokens", "finish_reason", "feedback")
#: a spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PAGE = 500


@dataclass
class Export:
    """A finished export: the file's text, its content type and its download name."""

    body: str
    content_type: str
    filename: str
    truncated: bool = False
    headers: dict[str, str] = field(default_factory=dict)


def parse_format(raw: str | None) -> str:
    """``json`` when absent; 400 ``invalid_format`` for anything but json, md or csv (any case)."""
    fmt = "json" if raw is None else raw.strip().lower()
    if fmt not in FORMATS:
        raise InvalidRequest("format must be one of: json, md, csv.", code="invalid_format",
                             details={"allowed": sorted(FORMATS)})
    return fmt


def safe_filename(title: str, cid: str, ext: str) -> str:
    """``<title>-<cid>.<ext>`` with the title reduced to ASCII letters, digits, ``.``, ``_``, ``-``
    (so the header needs no quoting rules and no client can be steered to another path)."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_title).strip("-._")[:60].strip("-._")
    return f"{slug or 'conversation'}-{cid}.{ext}"


def collect(store: Store, uid: str, cid: str, max_messages: int) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """The caller's conversation (404 for anyone else's), its first ``max_messages`` messages in
    order, and how many it has in all."""
    conv = conversation_resource(store.conversation(uid, cid))
    key = f"{store.p}conv:{cid}:msgs"
    total = int(store.redis.zcard(key))
    messages: list[dict[str, Any]] = []
    for start in range(0, min(total, max_messages), PAGE):
        stop = min(start + PAGE, max_messages) - 1
        mids = store.redis.zrange(key, start, stop)
        messages.extend(store.message_view(h) for h in store.messages_by_id(mids))
    return conv, messages, total


def export_conversation(store: Store, uid: str, cid: str, fmt: str, max_messages: int) -> Export:
    """The conversation as a ``fmt`` file (see ``FORMATS``)."""
    conv, messages, total = collect(store, uid, cid, max_messages)
    truncated = total > len(messages)
    render = {"json": as_json, "md": as_markdown, "csv": as_csv}[fmt]
    content_type, ext = FORMATS[fmt]
    out = Export(render(conv, messages, total), content_type, safe_filename(conv["title"], cid, ext), truncated)
    if truncated:
        out.headers["X-Export-Truncated"] = f"{len(messages)} of {total} messages"
    return out


def as_json(conv: dict[str, Any], messages: list[dict[str, Any]], total: int) -> str:
    """The conversation resource with every exported message, and whether it was cut."""
    doc = {**conv, "messages": messages, "exported_at": iso(now_ms()), "messages_total": total,
           "truncated": total > len(messages)}
    if doc["truncated"]:
        doc["truncated_note"] = f"Only the first {len(messages)} of {total} messages are included."
    return json.dumps(doc, ensure_ascii=False, indent=2)


def as_markdown(conv: dict[str, Any], messages: list[dict[str, Any]], total: int) -> str:
    """Title heading, persona, then each message with its role and time (cost and cache for replies)."""
    title = " ".join((conv["title"] or "Untitled conversation").split())
    lines = [f"# {title}", "", f"- Persona: {conv['persona'] or 'none'}", f"- Conversation: `{conv['id']}`",
             f"- Created: {conv['created_at']}", f"- Exported: {iso(now_ms())}",
             f"- Messages: {len(messages)}", ""]
    if total > len(messages):
        lines += [f"> Only the first {len(messages)} of {total} messages are included.", ""]
    for m in messages:
        label = "User" if m["role"] == "user" else "Assistant"
        head = [label, m["created_at"] or ""]
        if m["role"] == "assistant":
            head += [f"${m.get('cost_usd', 0):.6f}", "cached" if m.get("cached") else "not cached"]
            if m["state"] != "done":
                head.append(m["state"])
        lines += ["---", "", f"### {' · '.join(head)}", "", m["content"], ""]
    return "\n".join(lines)


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def csv_row(m: dict[str, Any]) -> list[Any]:
    """One message as a CSV row in ``CSV_COLUMNS`` order; reply-only columns are empty for users."""
    reply = m["role"] == "assistant"
    usage = m.get("usage") or {}
    feedback = m.get("feedback")  # {rating, comment} when the user rated the reply
    row = [
        m["id"], m["role"], m["created_at"] or "", m["state"], m["content"],
        f"{m.get('cost_usd', 0):.6f}" if reply else "",
        ("true" if m.get("cached") else "false") if reply else "",
        usage.get("input_tokens", usage.get("prompt_tokens", "")) if reply else "",
        usage.get("output_tokens", usage.get("completion_tokens", "")) if reply else "",
        (m.get("finish_reason") or "") if reply else "",
        feedback.get("rating", "") if isinstance(feedback, dict) else "",
    ]
    return [_cell(v) for v in row]


def as_csv(conv: dict[str, Any], messages: list[dict[str, Any]], total: int) -> str:
    """A header row, then one row per message (RFC 4180 quoting by the csv module)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_row(m) for m in messages)
    return out.getvalue()
