"""Regenerate: a new reply to a conversation's last user message, the old one kept as a version.

The new reply takes the old one's place in the conversation (so history and the next turn use
it), and every version's id stays listed, oldest first, under the user message they answer
(``P msg:<user mid>:versions``), so a client can flip between them. One atomic script checks
that the replaced reply is still the last message and has finished, then stores the new one.
"""
from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from chatapp.auth import User
from chatapp.chat import (
    Accepted, conversation_persona, generation_refused, queued_reply_fields, render_request, reply_params, vet_request,
)
from chatapp.errors import ChatAppError, Conflict, NotFound, RateLimited
from chatapp.ids import new_id, now_ms
from chatapp.limits import check_rate
from chatapp.schemas import check_params

if TYPE_CHECKING:  # pragma: no cover
    from chatapp.extension import ChatApp

log = logging.getLogger(__name__)


def not_last(last_mid: str) -> Conflict:
    return Conflict("That reply is no longer the last one; regenerate the current last reply.",
                    code="not_last_reply", details={"last_message_id": last_mid})


def in_progress(mid: str) -> Conflict:
    return Conflict("The last reply is still being generated; stop it or wait for it to finish.",
                    code="reply_in_progress", details={"message_id": mid})


def refusal(out: list[str], max_active: int) -> ChatAppError:
    """The error for the regenerate script's refusal ``out``."""
    if out[0] == "not_found":
        return NotFound("No such conversation.", code="conversation_not_found")
    if out[0] == "no_reply":
        return Conflict("This conversation has no reply to regenerate yet.", code="nothing_to_regenerate")
    if out[0] == "not_last":
        return not_last(out[1])
    if out[0] == "in_progress":
        return in_progress(out[1])
    return RateLimited(f"You have {max_active} replies in progress; wait for one to finish (or stop one) and "
                       "try again.", code="too_many_generations", retry_after=2)


def regenerate(ext: "ChatApp", user: User, cid: str, expect_mid: str | None = None,
               params: dict[str, Any] | None = None) -> Accepted:
    """Start a new version of the last reply in ``cid``; ``expect_mid`` (optional) is the reply
    the caller sees as last: if another one has replaced it since, a 409 says so."""
    config = ext.config
    params = check_params(dict(params or {}), config["MAX_TOKENS_LIMIT"])
    conv = ext.store.conversation(user.id, cid)
    check_rate(ext.redis, ext.prefix, user.id, "send", int(config["RATE_LIMIT_SENDS_PER_MINUTE"]))
    last = ext.redis.zrange(f"{ext.prefix}conv:{cid}:msgs", -1, -1)
    old_mid = expect_mid or (last[0] if last else "")
    old = ext.redis.hgetall(f"{ext.prefix}msg:{old_mid}") if old_mid else {}
    if not old or old.get("conversation_id") != cid or old.get("role") != "assistant":
        if expect_mid:
            raise NotFound("No such message.", code="message_not_found")
        raise Conflict("This conversation has no reply to regenerate yet.", code="nothing_to_regenerate")

    # the script checks these atomically; checking first as well keeps an obvious refusal from
    # running before_generation (a budget hold would wait for its TTL)
    if last and last[0] != old_mid:
        raise not_last(last[0])
    if old.get("state") in ("queued", "generating"):
        raise in_progress(old_mid)
    persona = conversation_persona(ext, conv)
    provider = ext.catalog.provider(conv.get("provider") or None)
    merged = reply_params(persona, conv, params)
    # "use" would hand back the very reply being replaced; refresh stores the new one instead
    cache_mode = merged.pop("cache", "refresh")
    cache_mode = "refresh" if cache_mode == "use" else cache_mode
    mid = new_id("m")
    request = render_request(ext, conv, mid, user.id, user.name, old_mid, None, provider.id,
                             conv.get("model") or ext.catalog.model_for(provider, None), merged, cache_mode)
    vet_request(ext, request)
    job_id = ext.queue.first_job_id(mid)
    spec = {
        "reply_message": queued_reply_fields(request, old.get("reply_to", ""), job_id, now_ms()),
        "queued_event": json.dumps({"state": "queued"}),
        "max_active": int(config["MAX_ACTIVE_GENERATIONS"]),
    }
    out = ext.replies.regenerate(user.id, cid, old_mid if expect_mid else "", mid, spec)
    if out[0] != "ok":  # refused atomically after before_generation: plugins let go of holds
        error = refusal(out, int(config["MAX_ACTIVE_GENERATIONS"]))
        generation_refused(ext, request, error.code)
        raise error
    try:
        ext.queue.enqueue(mid, job_id)
    except Exception:  # the reply is stored with a lease: the reaper enqueues it
        log.exception("enqueue failed for %s; the reaper will retry", mid)
    return Accepted(cid, old.get("reply_to", ""), mid, "queued")
