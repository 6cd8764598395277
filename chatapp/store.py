"""Conversations and messages in Redis: reads, listings and the simple writes.

Layout (prefix P): ``P conv:<cid>`` hash, ``P conv:<cid>:msgs`` zset of message ids by position
(a regenerated reply's earlier versions leave it and are listed in ``P msg:<user mid>:versions``),
``P user:<uid>:convs`` zset of conversation ids by last activity (ms), ``P msg:<mid>`` hash,
``P ev:<mid>`` the reply's event stream. Listing is a ZRANGE: O(log n + page), never a scan.
Reply writes (send, finish, cancel...) live in ``chatapp.replies``.
"""
from __future__ import annotations

import base64
import json
from typing import Any

import redis

from chatapp.errors import InvalidRequest, NotFound
from chatapp.ids import iso, new_id, now_ms
from chatapp.models import Message
from chatapp.scripts import Scripts

#: the most stored turns a request's history reads (the token budget usually stops it sooner)
HISTORY_MAX_MESSAGES = 200


def turns_oldest_first(flat: list[str]) -> list[Message]:
    """The history scripts' flat (role, content) answer, newest first, as prompt turns oldest first."""
    return [Message(flat[i], flat[i + 1]) for i in range(len(flat) - 2, -1, -2)]


def _is_live(h: dict[str, str]) -> bool:
    """A reply still being written: its text so far is in the ``:partial`` key."""
    return h["role"] == "assistant" and h["state"] in ("queued", "generating")


MESSAGE_FIELDS_HIDDEN = {"owner", "cancel", "partial", "provider_state", "seq", "msg_counter"}


def _loads(value: str | None, default: Any) -> Any:
    try:
        return json.loads(value) if value else default
    except ValueError:
        return default


def conversation_resource(h: dict[str, str]) -> dict[str, Any]:
    """A stored conversation hash as the API shows it."""
    return {
        "id": h["id"],
        "title": h.get("title", ""),
        "persona": h.get("persona", ""),
        "persona_version": h.get("persona_version", ""),
        "provider": h.get("provider", ""),
        "model": h.get("model", ""),
        "params": _loads(h.get("params"), {}),
        "created_at": iso(h.get("created_at")),
        "updated_at": iso(h.get("updated_at")),
        "message_count": int(h.get("message_count", 0)),
        "cost_usd": int(h.get("cost_micros", 0)) / 1_000_000,
    }


def message_resource(h: dict[str, str], partial: str | None = None,
                     versions: list[str] | None = None) -> dict[str, Any]:
    """A stored message hash as the API shows it; ``partial`` is the text so far while generating,
    ``versions`` the ids of every version of a regenerated reply, oldest first."""
    out: dict[str, Any] = {
        "id": h["id"],
        "conversation_id": h["conversation_id"],
        "role": h["role"],
        "content": h.get("content", "") if partial is None else partial,
        "state": h["state"],
        "created_at": iso(h.get("created_at")),
    }
    if h.get("client_message_id"):
        out["client_message_id"] = h["client_message_id"]
    if h["role"] == "assistant":
        out.update({
            "reply_to": h.get("reply_to"),
            "cost_usd": int(h.get("cost_micros") or 0) / 1_000_000,
            "cached": h.get("cached") == "1",
            "usage": _loads(h.get("usage"), {}),
            "finish_reason": h.get("finish_reason") or None,
            "provider": h.get("provider", ""),
            "model": h.get("model", ""),
            "seq": int(h.get("seq", 0)),
            "finished_at": iso(h.get("finished_at")),
            "cost_breakdown": _loads(h.get("meta"), {}).get("cost_breakdown") or {},
        })
        if h.get("error"):
            out["error"] = _loads(h.get("error"), {})
        versions = versions or [h["id"]]
        out["versions"] = versions
        out["version"] = versions.index(h["id"]) + 1 if h["id"] in versions else len(versions)
        if h.get("replaces"):
            out["replaces"] = h["replaces"]
        if h.get("feedback"):
            out["feedback"] = _loads(h.get("feedback"), {})
    return out


def encode_cursor(score: float, member: str) -> str:
    return base64.urlsafe_b64encode(f"{int(score)}:{member}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, member = raw.split(":", 1)
        return int(score), member
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest("The cursor is not valid; use next_cursor from a previous page.",
                             code="invalid_cursor") from exc


class Store:
    """Reads and simple writes of conversations and messages for one Redis client."""

    def __init__(self, client: redis.Redis, scripts: Scripts, prefix: str) -> None:
        self.redis = client
        self.scripts = scripts
        self.p = prefix

    # -- conversations ---------------------------------------------------------------------
    def new_conversation_fields(self, uid: str, title: str, persona: str, provider: str, model: str,
                                params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        cid, now = new_id("c"), now_ms()
        return cid, {
            "id": cid, "user_id": uid, "title": title, "persona": persona, "provider": provider,
            "model": model, "params": json.dumps(params), "created_at": now, "updated_at": now,
            "message_count": 0, "cost_micros": 0, "msg_counter": 0,
        }

    def create_conversation(self, fields: dict[str, Any]) -> dict[str, Any]:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(f"{self.p}conv:{fields['id']}", mapping=fields)
            pipe.zadd(f"{self.p}user:{fields['user_id']}:convs", {fields["id"]: fields["updated_at"]})
            pipe.execute()
        return conversation_resource({k: str(v) for k, v in fields.items()})

    def conversation(self, uid: str, cid: str) -> dict[str, str]:
        """The stored hash of the caller's conversation; 404 for anyone else's."""
        h = self.redis.hgetall(f"{self.p}conv:{cid}") if cid else {}
        if not h or h.get("user_id") != uid:
            raise NotFound("No such conversation.", code="conversation_not_found")
        return h

    def update_conversation(self, uid: str, cid: str, changes: dict[str, Any]) -> dict[str, Any]:
        key = f"{self.p}conv:{cid}"
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if pipe.hget(key, "user_id") != uid:
                        raise NotFound("No such conversation.", code="conversation_not_found")
                    now = now_ms()
                    pipe.multi()
                    pipe.hset(key, mapping={**changes, "updated_at": now})
                    pipe.zadd(f"{self.p}user:{uid}:convs", {cid: now})
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        return conversation_resource(self.redis.hgetall(key))

    def delete_conversation(self, uid: str, cid: str) -> None:
        if self.scripts.delete_conversation(args=[self.p, cid, uid]) == -1:
            raise NotFound("No such conversation.", code="conversation_not_found")

    def list_conversations(self, uid: str, limit: int, cursor: str | None) -> dict[str, Any]:
        """Newest activity first; ``cursor`` continues after the last item of a previous page."""
        key = f"{self.p}user:{uid}:convs"
        top: int | str = "+inf"
        after_member = None
        if cursor:
            top, after_member = decode_cursor(cursor)
        items: list[tuple[str, float]] = []
        offset = 0
        while len(items) < limit + 1:
            batch = self.redis.zrange(key, top, "-inf", desc=True, byscore=True, offset=offset,
                                      num=limit + 1, withscores=True)
            if not batch:
                break
            offset += len(batch)
            for member, score in batch:
                # members sharing the cursor's score were already shown up to after_member
                if after_member is not None and int(score) == top and member >= after_member:
                    continue
                items.append((member, score))
        page, more = items[:limit], len(items) > limit
        with self.redis.pipeline(transaction=False) as pipe:
            for cid, _ in page:
                pipe.hgetall(f"{self.p}conv:{cid}")
            hashes = pipe.execute()
        return {
            "items": [conversation_resource(h) for h in hashes if h],
            "next_cursor": encode_cursor(page[-1][1], page[-1][0]) if more and page else None,
        }

    # -- messages ---------------------------------------------------------------------------
    def message(self, uid: str, mid: str, cid: str | None = None) -> dict[str, str]:
        """The stored hash of the caller's message; 404 for anyone else's (or another conversation's)."""
        h = self.redis.hgetall(f"{self.p}msg:{mid}") if mid else {}
        if not h or h.get("user_id") != uid or (cid is not None and h.get("conversation_id") != cid):
            raise NotFound("No such message.", code="message_not_found")
        return h

    def message_views(self, uid: str, mids: list[str]) -> list[dict[str, Any]]:
        """The API views of several of the caller's messages from one atomic read (a live reply's
        text and ``seq`` are consistent, as in ``message_view``); 404 if any is not theirs."""
        with self.redis.pipeline(transaction=True) as pipe:
            for mid in mids:
                pipe.hgetall(f"{self.p}msg:{mid}")
                pipe.get(f"{self.p}msg:{mid}:partial")
            out = pipe.execute()
        if any(not h or h.get("user_id") != uid for h in out[::2]):
            raise NotFound("No such message.", code="message_not_found")
        return [self._view(h, partial) for h, partial in zip(out[::2], out[1::2])]

    def message_view(self, h: dict[str, str]) -> dict[str, Any]:
        """The API view; a live reply's text and ``seq`` come from one atomic read, so a client
        that resumes from that ``seq`` gets exactly the rest."""
        partial = None
        if _is_live(h):
            key = f"{self.p}msg:{h['id']}"
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(key)
                pipe.get(key + ":partial")
                fresh, partial = pipe.execute()
            if fresh:
                h = fresh
        return self._view(h, partial)

    def _view(self, h: dict[str, str], partial: str | None) -> dict[str, Any]:
        """The view of record ``h`` with ``partial``, the text read atomically with it (used only
        while the reply is live: once finished, its content is final)."""
        versions = (self.redis.lrange(f"{self.p}msg:{h['versions_of']}:versions", 0, -1)
                    if h.get("versions_of") else None)
        return message_resource(h, (partial or "") if _is_live(h) else None, versions)

    def list_messages(self, uid: str, cid: str, limit: int, before: str | None) -> dict[str, Any]:
        """A page of messages in chronological order, ending just before ``before`` (a message id)."""
        self.conversation(uid, cid)
        key = f"{self.p}conv:{cid}:msgs"
        top: str = "+inf"
        if before:
            score = self.redis.zscore(key, before)
            if score is None:
                raise NotFound("No such message in this conversation.", code="message_not_found")
            top = f"({int(score)}"
        mids = self.redis.zrange(key, top, "-inf", desc=True, byscore=True, offset=0, num=limit + 1)
        more, mids = len(mids) > limit, mids[:limit]
        hashes = self.messages_by_id(mids)
        items = [self.message_view(h) for h in reversed(hashes)]
        return {"items": items, "next_cursor": mids[-1] if more and mids else None}

    def messages_by_id(self, mids: list[str]) -> list[dict[str, str]]:
        with self.redis.pipeline(transaction=False) as pipe:
            for mid in mids:
                pipe.hgetall(f"{self.p}msg:{mid}")
            return [h for h in pipe.execute() if h]

    def history(self, cid: str, upto_mid: str | None = None, budget_tokens: int | None = None,
                max_messages: int = HISTORY_MAX_MESSAGES) -> list[Message]:
        """The latest usable turns before ``upto_mid`` (the newest when None), oldest first (failed,
        unfinished and empty replies left out), gathered server-side in one call and no further back than
        ``budget_tokens`` can use, so a send costs O(budget), not O(conversation)."""
        top = "+inf"
        if upto_mid is not None:
            score = self.redis.zscore(f"{self.p}conv:{cid}:msgs", upto_mid)
            if score is None:
                return []
            top = f"({int(score)}"
        flat = self.scripts.history(args=[self.p, cid, top, -1 if budget_tokens is None else budget_tokens,
                                          max_messages])
        return turns_oldest_first(flat)
