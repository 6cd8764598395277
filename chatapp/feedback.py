"""Feedback: a user's thumbs up or down (and an optional comment) on one of their replies.

Stored on the reply itself (``feedback`` field, shown in the message resource and exports), then
handed to the ``after_feedback`` hook with the rating it replaced, so analytics move counters
instead of counting a change of mind twice.
"""
from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import redis

from chatapp.auth import User
from chatapp.errors import Conflict, NotFound
from chatapp.models import Feedback

if TYPE_CHECKING:  # pragma: no cover
    from chatapp.extension import ChatApp

log = logging.getLogger(__name__)


def give_feedback(ext: "ChatApp", user: User, cid: str, mid: str, rating: str, comment: str = "") -> dict[str, Any]:
    """Store ``rating`` on the caller's finished reply ``mid``; returns the message as it stands."""
    key = f"{ext.prefix}msg:{mid}"
    now = time.time()
    with ext.redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(key)
                h = pipe.hgetall(key)
                if not h or h.get("user_id") != user.id or h.get("conversation_id") != cid:
                    raise NotFound("No such message.", code="message_not_found")
                if h.get("role") != "assistant":
                    raise Conflict("Only replies can be rated.", code="not_a_reply")
                if h.get("state") in ("queued", "generating"):
                    raise Conflict("This reply is still being generated; rate it when it has finished.",
                                   code="reply_in_progress")
                previous = json.loads(h["feedback"]).get("rating") if h.get("feedback") else None
                pipe.multi()
                pipe.hset(key, "feedback", json.dumps({"rating": rating, "comment": comment,
                                                       "at": round(now, 3)}))
                pipe.execute()
                break
            except redis.WatchError:
                continue
    feedback = Feedback(message_id=mid, conversation_id=cid, user_id=user.id, rating=rating, comment=comment,
                        previous_rating=previous, persona=h.get("persona", ""), provider=h.get("provider", ""),
                        model=h.get("model", ""), at=now)
    try:
        ext.pm.hook.after_feedback(feedback=feedback, host=ext.host)
    except Exception:  # the rating is stored; a failing analytics plugin must not turn it into a 500
        log.exception("after_feedback failed for %s", mid)
    return ext.store.message_view(ext.store.message(user.id, mid, cid))
