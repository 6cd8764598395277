"""Batches (``POST /batch``, ``GET /batch/<id>``): many one-shot questions at once.

Each prompt becomes its own new conversation, sent through ``ChatService.send(batch_id=...)``,
so the cache, budgets (``before_generation``) and fenced replies apply to every item as to any
message. What is different for batch items (see ``ChatService.send``): the whole batch counts
once against the send rate limit, items are exempt from MAX_ACTIVE_GENERATIONS, their jobs go to
the ``<QUEUE_NAME>-batch`` queue that workers take only when the main queue is empty, and their
conversations are indexed in ``user:<uid>:batchconvs``, out of the sidebar.

Layout (prefix P): ``P batch:<id>`` hash (id, user_id, created_at, persona, params, total) and
``P batch:<id>:items`` list of JSON items (index, prompt, conversation_id, message_id, or an
``error`` for an item refused at send time), both expiring after ``BATCH_TTL_S``. Progress is
not counted by the workers: a read looks up each item's reply record (one pipelined round trip
for at most ``MAX_BATCH_PROMPTS`` items), so it is always exactly what the replies say.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from chatapp.auth import User
from chatapp.errors import ChatAppError, NotFound, TooLarge
from chatapp.ids import iso, new_id, now_ms
from chatapp.limits import check_rate
from chatapp.schemas import check_content, check_params

if TYPE_CHECKING:  # pragma: no cover
    from chatapp.extension import ChatApp

PENDING = ("queued", "generating")
REPLY_FIELDS = ("user_id", "state", "content", "cost_micros", "cached", "error")


def _key(ext: "ChatApp", bid: str) -> str:
    return f"{ext.prefix}batch:{bid}"


def validate_prompts(ext: "ChatApp", prompts: list[str], params: dict[str, Any] | None) -> dict[str, Any]:
    """Refuse the whole batch before anything is stored: 413 ``too_many_prompts`` past
    MAX_BATCH_PROMPTS, a prompt that is empty or over MAX_MESSAGE_BYTES (``details.index`` says
    which), bad params. Returns the checked params."""
    cap = int(ext.config["MAX_BATCH_PROMPTS"])
    if len(prompts) > cap:
        raise TooLarge(f"A batch holds at most {cap} prompts; split it into several.", code="too_many_prompts",
                       details={"limit": cap, "count": len(prompts)})
    for index, prompt in enumerate(prompts):
        try:
            check_content(prompt, int(ext.config["MAX_MESSAGE_BYTES"]), field=f"prompts[{index}]")
        except ChatAppError as err:
            err.details["index"] = index
            raise
    return check_params(dict(params or {}), int(ext.config["MAX_TOKENS_LIMIT"]))


def create_batch(ext: "ChatApp", user: User, prompts: list[str], persona: str | None = None,
                 params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Send every prompt as a one-shot question and store the batch; returns its view.

    An item that a plugin refuses at send time (for example ``402 budget_exhausted`` from the
    budgets plugin) is recorded as failed with that error body; the other items go on.
    """
    params = validate_prompts(ext, prompts, params)
    persona_obj = ext.catalog.persona(persona)  # 400 unknown_persona before anything is stored
    check_rate(ext.redis, ext.prefix, user.id, "send", int(ext.config["RATE_LIMIT_SENDS_PER_MINUTE"]))
    bid, created = new_id("b"), now_ms()
    items: list[dict[str, Any]] = []
    for index, prompt in enumerate(prompts):
        item: dict[str, Any] = {"index": index, "prompt": prompt}
        try:
            accepted = ext.chat.send(user, conversation_id=None, content=prompt, persona=persona,
                                     params=params, batch_id=bid)
            item.update(conversation_id=accepted.conversation_id, message_id=accepted.message_id)
        except ChatAppError as err:
            item["error"] = err.to_dict()["error"]
        items.append(item)
    key, ttl = _key(ext, bid), int(ext.config["BATCH_TTL_S"])
    with ext.redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={"id": bid, "user_id": user.id, "created_at": created, "total": len(prompts),
                                "persona": persona_obj.name if persona_obj else "", "params": json.dumps(params)})
        pipe.rpush(key + ":items", *(json.dumps(item, ensure_ascii=False) for item in items))
        pipe.expire(key, ttl)
        pipe.expire(key + ":items", ttl)
        pipe.execute()
    return batch_view(ext, user.id, bid)


def batch_view(ext: "ChatApp", uid: str, bid: str) -> dict[str, Any]:
    """The batch with each item's state and answer, the counts and the cost so far; 404
    ``batch_not_found`` for a missing, expired or another user's batch."""
    key = _key(ext, bid)
    with ext.redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(key)
        pipe.lrange(key + ":items", 0, -1)
        head, raw_items = pipe.execute()
    if not head or head.get("user_id") != uid:
        raise NotFound("No such batch.", code="batch_not_found")
    items = [json.loads(raw) for raw in raw_items]
    with ext.redis.pipeline(transaction=False) as pipe:
        for item in items:
            pipe.hmget(f"{ext.prefix}msg:{item.get('message_id', '')}", REPLY_FIELDS)
        replies = pipe.execute()
    views = [_item_view(uid, item, dict(zip(REPLY_FIELDS, reply))) for item, reply in zip(items, replies)]
    counts = {state: sum(1 for v in views if v["state"] == state) for state in ("done", "failed", "cancelled")}
    pending = sum(1 for v in views if v["state"] in PENDING)
    total_micros = sum(v.pop("_micros") for v in views)
    created = int(head["created_at"])
    return {
        "id": bid, "created_at": iso(created), "expires_at": iso(created + int(ext.config["BATCH_TTL_S"]) * 1000),
        "persona": head.get("persona", ""), "params": json.loads(head.get("params") or "{}"),
        "total": int(head["total"]), **counts, "pending": pending, "state": "running" if pending else "done",
        "items": views,
        "total_cost_usd": total_micros / 1_000_000,
        # per answered prompt: what a prompt of this batch costs
        "average_cost_usd": round(total_micros / counts["done"] / 1_000_000, 6) if counts["done"] else 0.0,
    }


def _item_view(uid: str, item: dict[str, Any], reply: dict[str, str | None]) -> dict[str, Any]:
    view: dict[str, Any] = {"index": item["index"], "prompt": item["prompt"],
                            "conversation_id": item.get("conversation_id"), "message_id": item.get("message_id"),
                            "state": "failed", "content": "", "cost_usd": 0.0, "cached": False, "_micros": 0}
    if "error" in item:  # refused when sent
        view["error"] = item["error"]
    elif reply.get("user_id") != uid:  # its conversation was deleted since
        view.update(state="cancelled", error={"code": "conversation_deleted", "details": {},
                                              "message": "This item's conversation was deleted."})
    else:
        micros = int(reply.get("cost_micros") or 0)
        view.update(state=reply["state"], content=reply.get("content") or "", cost_usd=micros / 1_000_000,
                    cached=reply.get("cached") == "1", _micros=micros)
        if reply.get("error"):
            view["error"] = json.loads(reply["error"])
    return view
