"""Conversation search (``GET /conversations?q=``) without a search index.

Redis here has no RediSearch, so a search walks the caller's ``user:<uid>:convs`` zset newest
first, in pipelined batches: the conversation hashes (title) in one round trip, the newest
message ids of those whose title did not match in a second, their ``content`` (HMGET) in a
third. The walk is bounded per request: it stops when the page is full, after
``SEARCH_SCAN_LIMIT`` conversations, or before a conversation that would take it past
``SEARCH_SCAN_MESSAGES`` message reads. ``next_cursor`` is the position of the last conversation
looked at, in the listing's cursor format, so the client goes on from exactly there; a page may
therefore hold fewer than ``limit`` items (even none) and still have a ``next_cursor``.
"""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterator

from chatapp.errors import InvalidRequest
from chatapp.store import Store, conversation_resource, decode_cursor, encode_cursor

MAX_QUERY_CHARS = 200
#: conversations read per round trip
BATCH = 50
#: message contents read per round trip
MESSAGE_CHUNK = 500
SNIPPET_CHARS = 120


def parse_query(raw: str) -> str:
    """The trimmed query; 400 ``invalid_query`` unless it is 1 to 200 characters."""
    q = raw.strip()
    if not 1 <= len(q) <= MAX_QUERY_CHARS:
        raise InvalidRequest(f"q must be 1 to {MAX_QUERY_CHARS} characters (after trimming spaces).",
                             code="invalid_query", details={"max_chars": MAX_QUERY_CHARS})
    return q


def snippet(text: str, needle: str, width: int = SNIPPET_CHARS) -> str:
    """About ``width`` characters of ``text`` around the first match of ``needle`` (casefolded)."""
    folded = text.casefold()
    pos = max(folded.find(needle), 0)
    if len(folded) != len(text):  # casefold changed lengths (e.g. "ß" -> "ss"): positions are approximate
        pos = min(pos, len(text))
    start = max(0, pos - (width - len(needle)) // 2)
    end = min(len(text), start + width)
    start = max(0, end - width)
    piece = re.sub(r"\s+", " ", text[start:end]).strip()
    return ("…" if start > 0 else "") + piece + ("…" if end < len(text) else "")


class _Walk:
    """The members of a zset after ``cursor``, highest score first, fetched ``BATCH`` at a time.

    Ties are ordered as ``Store.list_conversations`` orders them (member descending), so the
    cursors of the two are interchangeable.
    """

    def __init__(self, store: Store, key: str, cursor: str | None) -> None:
        self.redis, self.key = store.redis, key
        self.top: int | str = "+inf"
        self.after: str | None = None
        if cursor:
            self.top, self.after = decode_cursor(cursor)
        self.offset = 0
        self.buffer: deque[tuple[str, float]] = deque()
        self.exhausted = False

    def _fill(self, n: int) -> None:
        while len(self.buffer) < n and not self.exhausted:
            rows = self.redis.zrange(self.key, self.top, "-inf", desc=True, byscore=True, offset=self.offset,
                                     num=max(n, BATCH), withscores=True)
            self.offset += len(rows)
            self.exhausted = not rows
            for member, score in rows:
                if self.after is not None and int(score) == self.top and member >= self.after:
                    continue  # shown before the cursor
                self.buffer.append((member, score))

    def take(self, n: int) -> list[tuple[str, float]]:
        self._fill(n)
        return [self.buffer.popleft() for _ in range(min(n, len(self.buffer)))]

    def give_back(self, rows: list[tuple[str, float]]) -> None:
        self.buffer.extendleft(reversed(rows))

    def more(self) -> bool:
        self._fill(1)
        return bool(self.buffer)


@dataclass
class _Candidate:
    cid: str
    score: float
    conv: dict[str, str]
    mids: list[str]  # newest first; empty when the title matched or it has no messages


def search_conversations(store: Store, uid: str, query: str, limit: int, cursor: str | None,
                         scan_limit: int, message_budget: int) -> dict[str, Any]:
    """The caller's conversations whose title or message text contains ``query`` (case-insensitive),
    newest activity first, as ``{items, next_cursor}``; each item is the conversation resource
    plus ``match`` ("title" or "message"), ``snippet`` and, for a message match, ``message_id``."""
    needle = query.casefold()
    walk = _Walk(store, f"{store.p}user:{uid}:convs", cursor)
    items: list[dict[str, Any]] = []
    scanned, budget = 0, max(0, message_budget)
    last: tuple[str, float] | None = None
    while len(items) < limit and scanned < scan_limit:
        rows = walk.take(min(BATCH, scan_limit - scanned))
        if not rows:
            break
        candidates, rest, budget = _plan(store, uid, rows, needle, budget, first=scanned == 0)
        walk.give_back(rest)
        if not candidates:
            break  # the next conversation alone is over the message budget: stop before it
        contents = _contents(store, [mid for c in candidates for mid in c.mids])
        for i, c in enumerate(candidates):
            scanned += 1
            last = (c.cid, c.score)
            hit = _match(c, needle, contents)
            if hit is not None:
                items.append({**conversation_resource(c.conv), **hit})
            if len(items) == limit:  # the page is full: the rest of the batch is the next page's
                walk.give_back([(x.cid, x.score) for x in candidates[i + 1:]])
                break
    more = last is not None and walk.more()
    return {"items": items, "next_cursor": encode_cursor(last[1], last[0]) if more and last else None}


def _plan(store: Store, uid: str, rows: list[tuple[str, float]], needle: str, budget: int,
          first: bool) -> tuple[list[_Candidate], list[tuple[str, float]], int]:
    """Read a batch of conversations and, for those whose title does not match, the ids of the
    messages to read (newest first); stop before one that would exceed the message budget
    (unless it is the request's first, which is then read up to the budget so a search always
    moves on). Returns the candidates, the rows left for later and the budget left."""
    with store.redis.pipeline(transaction=False) as pipe:
        for cid, _ in rows:
            pipe.hgetall(f"{store.p}conv:{cid}")
        convs = pipe.execute()
    candidates: list[_Candidate] = []
    wanted: list[tuple[_Candidate, int]] = []
    for i, ((cid, score), conv) in enumerate(zip(rows, convs)):
        if not conv or conv.get("user_id") != uid:  # deleted meanwhile (or not the caller's)
            candidates.append(_Candidate(cid, score, {}, []))
            continue
        count = 0 if needle in conv.get("title", "").casefold() else int(conv.get("message_count") or 0)
        if count > budget and not (first and not candidates):
            return _fetch_mids(store, candidates, wanted), rows[i:], budget
        count = min(count, budget)
        budget -= count
        candidate = _Candidate(cid, score, conv, [])
        candidates.append(candidate)
        if count:
            wanted.append((candidate, count))
    return _fetch_mids(store, candidates, wanted), [], budget


def _fetch_mids(store: Store, candidates: list[_Candidate], wanted: list[tuple[_Candidate, int]]) -> list[_Candidate]:
    with store.redis.pipeline(transaction=False) as pipe:
        for candidate, count in wanted:
            pipe.zrange(f"{store.p}conv:{candidate.cid}:msgs", 0, count - 1, desc=True)
        for (candidate, _), mids in zip(wanted, pipe.execute()):
            candidate.mids = mids
    return candidates


def _contents(store: Store, mids: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for chunk in _chunks(mids, MESSAGE_CHUNK):
        with store.redis.pipeline(transaction=False) as pipe:
            for mid in chunk:
                pipe.hget(f"{store.p}msg:{mid}", "content")
            out.update((mid, text or "") for mid, text in zip(chunk, pipe.execute()))
    return out


def _chunks(values: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(values), size):
        yield values[i:i + size]


def _match(c: _Candidate, needle: str, contents: dict[str, str]) -> dict[str, Any] | None:
    """How conversation ``c`` matches: its title, else its newest message containing the query."""
    if not c.conv:
        return None
    title = c.conv.get("title", "")
    if needle in title.casefold():
        return {"match": "title", "snippet": snippet(title, needle)}
    for mid in c.mids:
        text = contents.get(mid, "")
        if needle in text.casefold():
            return {"match": "message", "message_id": mid, "snippet": snippet(text, needle)}
    return None
