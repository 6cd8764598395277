"""Chat orchestration in the web process: validate, render, ask the plugins, store, enqueue.

A send is one atomic Redis step (user message + queued reply + idempotency key + lease), then an
RQ job. A cache hit stores the finished reply in that same step and enqueues nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from chatapp.auth import User
from chatapp.errors import ChatAppError, Conflict, GenerationLost, NotFound, RateLimited
from chatapp.ids import new_id
from chatapp.limits import check_rate
from chatapp.models import CachedReply, ChatRequest, Cost, GenerationResult, Persona, Provider, Usage
from chatapp.prompt import render_messages
from chatapp.replies import ReplySource
from chatapp.schemas import check_content, check_params

if TYPE_CHECKING:  # pragma: no cover
    from chatapp.extension import ChatApp

log = logging.getLogger(__name__)


@dataclass
class Accepted:
    conversation_id: str
    user_message_id: str
    message_id: str
    state: str
    client_message_id: str | None = None
    cached: bool = False
    duplicate: bool = False


def _fields(mapping: dict[str, Any]) -> list[str]:
    """A hash as the flat [field, value, ...] list the send script passes to HSET."""
    out: list[str] = []
    for key, value in mapping.items():
        out += [key, value if isinstance(value, str) else json.dumps(value) if isinstance(value, dict) else str(value)]
    return out


def reply_params(persona: Persona | None, conv: dict[str, str], params: dict[str, Any]) -> dict[str, Any]:
    """Sampling params for a reply: the persona's, then the conversation's, then this request's."""
    return {**(persona.params if persona else {}), **json.loads(conv.get("params") or "{}"), **params}


def queued_reply_fields(request: ChatRequest, reply_to: str, job_id: str, created_at: int) -> list[str]:
    """The stored record of a new, queued reply answering ``request`` (for the send and
    regenerate scripts' HSET)."""
    return _fields({"id": request.message_id, "conversation_id": request.conversation_id,
                    "user_id": request.user_id, "role": "assistant", "content": "", "state": "queued",
                    "created_at": created_at, "reply_to": reply_to, "provider": request.provider,
                    "model": request.model, "persona": request.persona.name if request.persona else "",
                    "params": request.params, "cache": request.cache, "job_id": job_id, "attempt": 0,
                    "owner": "", "cancel": "0"})


def conversation_persona(ext: "ChatApp", conv: dict[str, str]) -> Persona | None:
    """The conversation's persona as pinned when it started (or last changed), with its
    per-conversation system prompt override applied."""
    pinned = conv.get("persona_version")
    persona = ext.persona_versions.get(pinned) if pinned else None
    if persona is None:
        persona = ext.catalog.persona(conv.get("persona") or None)
    override = conv.get("system_prompt")
    if override:
        persona = replace(persona, system_prompt=override) if persona else Persona(name="custom", system_prompt=override)
    return persona


def vet_request(ext: "ChatApp", request: ChatRequest) -> None:
    """Run ``before_generation``; if a plugin refuses, the others let go of what they reserved."""
    try:
        ext.pm.hook.before_generation(request=request, host=ext.host)
    except ChatAppError as err:
        generation_refused(ext, request, err.code)
        raise


def generation_refused(ext: "ChatApp", request: ChatRequest, reason: str) -> None:
    """Tell plugins that ``request`` passed ``before_generation`` but was not accepted."""
    try:
        ext.pm.hook.generation_refused(request=request, reason=reason, host=ext.host)
    except Exception:  # a plugin's failure to release must not hide the refusal itself
        log.exception("generation_refused failed for %s", request.message_id)


def request_for_reply(ext: "ChatApp", mid: str, source: ReplySource | None = None) -> tuple[ChatRequest, Provider]:
    """The request a stored reply answers, rendered from its conversation as it stands: from
    ``source`` when the claim already read it, else read here."""
    if source is not None:
        h, conv, user_name = source.record, source.conversation, source.user_name
    else:
        h = ext.redis.hgetall(f"{ext.prefix}msg:{mid}")
        conv = ext.redis.hgetall(f"{ext.prefix}conv:{h.get('conversation_id')}") if h else {}
        user = ext.users.get(h["user_id"]) if h and conv else None
        user_name = user.name if user else ""
    if not h or not conv:
        raise GenerationLost("The conversation was deleted.", code="conversation_deleted")
    provider = ext.catalog.provider(h.get("provider"))
    request = render_request(ext, conv, mid, h["user_id"], user_name or "User", mid, None,
                             provider.id, h.get("model", ""), json.loads(h.get("params") or "{}"), h.get("cache", "use"),
                             preread=source)
    return request, provider


def render_request(ext: "ChatApp", conv: dict[str, str], mid: str, user_id: str, user_name: str,
                   history_before: str | None, new_user_text: str | None, provider_id: str, model: str,
                   params: dict[str, Any], cache_mode: str, stored: bool = True,
                   preread: ReplySource | None = None) -> ChatRequest:
    """The ChatRequest for reply ``mid``: the pinned persona's filled-in system prompt and the
    history that fits its budget. The web renders before storing the new message
    (``new_user_text``, history up to now), the worker after (history before ``history_before``);
    ``preread`` is history already read, used when it was read with this persona's budget."""
    persona = conversation_persona(ext, conv)
    budget = persona.history_budget if persona and persona.history_budget else ext.config["HISTORY_TOKEN_BUDGET"]
    if not stored:
        history = []
    elif preread is not None and preread.budget_tokens == budget:
        history = preread.history
    else:
        history = ext.store.history(conv["id"], history_before, budget_tokens=budget)
    messages = render_messages(persona, history, new_user_text, budget, user_name=user_name,
                               default_prompt=ext.config["DEFAULT_SYSTEM_PROMPT"])
    return ChatRequest(message_id=mid, conversation_id=conv["id"], user_id=user_id, provider=provider_id,
                       model=model, messages=messages, params=params, persona=persona, cache=cache_mode)


def result_from_record(h: dict[str, str]) -> GenerationResult:
    """How a finished reply ended, read back from its stored record."""
    meta = json.loads(h.get("meta") or "{}")
    finished = int(h.get("finished_at") or 0) / 1000
    return GenerationResult(
        message_id=h["id"], state=h["state"], text=h.get("content", ""),
        finish_reason=h.get("finish_reason") or None, usage=Usage.from_dict(json.loads(h.get("usage") or "{}")),
        provider=h.get("provider", ""), model=h.get("model", ""), cached=h.get("cached") == "1",
        error=json.loads(h["error"]) if h.get("error") else None,
        started_at=meta.pop("started_at", None) or int(h.get("started_at") or h.get("created_at") or 0) / 1000,
        first_token_at=meta.pop("first_token_at", None), finished_at=meta.pop("finished_at", None) or finished,
        attempt=int(meta.pop("attempt", None) or h.get("attempt") or 0), meta=meta,
        cost=Cost(int(h.get("cost_micros") or 0), {"cost_saved_micros": meta.get("cost_saved_micros", 0)}),
    )


class ChatService:
    def __init__(self, ext: "ChatApp") -> None:
        self.ext = ext
        self.config = ext.config

    def new_conversation(self, user: User, *, title: str = "", persona: str | None = None,
                         provider: str | None = None, model: str | None = None,
                         params: dict[str, Any] | None = None, system_prompt: str = "") -> tuple[str, dict[str, Any]]:
        """Validated fields of a new conversation (not yet stored)."""
        persona_obj = self.ext.catalog.persona(persona)
        provider_obj = self.ext.catalog.provider(provider or (persona_obj.provider if persona_obj else None))
        model_id = self.ext.catalog.model_for(provider_obj, model or (persona_obj.model if persona_obj else None))
        params = check_params(dict(params or {}), self.config["MAX_TOKENS_LIMIT"])
        cid, fields = self.ext.store.new_conversation_fields(
            user.id, title, persona_obj.name if persona_obj else "", provider_obj.id, model_id, params)
        if persona_obj is not None:
            fields["persona_version"] = self.ext.persona_versions.pin(persona_obj)
        if system_prompt:
            fields["system_prompt"] = system_prompt
        return cid, fields

    def send(self, user: User, *, conversation_id: str | None, content: str, client_message_id: str | None = None,
             persona: str | None = None, params: dict[str, Any] | None = None, system_prompt: str = "",
             batch_id: str | None = None, conversation: dict[str, str] | None = None) -> Accepted:
        """Accept a user message and start (or serve from cache) its reply.

        ``batch_id`` marks an item of a batch (``chatapp.batch``): its new conversation is indexed
        in ``user:<uid>:batchconvs`` instead of the sidebar, the send rate limit (counted once
        for the whole batch by the caller) and MAX_ACTIVE_GENERATIONS do not apply, and the job
        goes to the low-priority batch queue. Budgets, the cache and fenced replies apply as usual.
        ``conversation`` is its stored hash when the caller has just read it (the send script
        checks ownership again atomically).
        """
        ext = self.ext
        check_content(content, self.config["MAX_MESSAGE_BYTES"])
        params = check_params(dict(params or {}), self.config["MAX_TOKENS_LIMIT"])
        if batch_id is None:
            check_rate(ext.redis, ext.prefix, user.id, "send", int(self.config["RATE_LIMIT_SENDS_PER_MINUTE"]))
        # a client_message_id is unique per user within a conversation (or among new ones)
        idem_key = (f"{ext.prefix}idem:{user.id}:{conversation_id or 'new'}:{client_message_id}"
                    if client_message_id else "")
        fingerprint = hashlib.sha256(content.encode("utf-8")).hexdigest()[:32]
        if idem_key:
            seen = ext.redis.get(idem_key)
            if seen:
                return self._duplicate(seen, fingerprint, client_message_id)
        new_conv = None
        if conversation_id:
            conv = conversation or ext.store.conversation(user.id, conversation_id)
        else:
            title = content.strip().splitlines()[0][: self.config["MAX_TITLE_CHARS"]]
            conversation_id, new_conv = self.new_conversation(user, title=title, persona=persona,
                                                              system_prompt=system_prompt)
            if batch_id is not None:
                new_conv["batch_id"] = batch_id
            conv = {k: str(v) for k, v in new_conv.items()}
        persona_obj = conversation_persona(ext, conv)
        provider = ext.catalog.provider(conv.get("provider") or None)
        merged = reply_params(persona_obj, conv, params)
        cache_mode = merged.pop("cache", "use")
        user_mid, reply_mid = new_id("m"), new_id("m")
        request = render_request(ext, conv, reply_mid, user.id, user.name, None, content, provider.id,
                                 conv.get("model") or ext.catalog.model_for(provider, None), merged, cache_mode,
                                 stored=new_conv is None)
        vet_request(ext, request)
        cached: CachedReply | None = None
        if cache_mode == "use":
            cached = ext.pm.hook.get_cached_reply(request=request, host=ext.host)
        now = int(time.time() * 1000)
        job_id = ext.queue.first_job_id(reply_mid)
        spec: dict[str, Any] = {
            "idempotency_key": idem_key,
            "idempotency_ttl": int(self.config["IDEMPOTENCY_TTL_S"]),
            "idempotency_value": json.dumps({"conversation_id": conversation_id, "user_message_id": user_mid,
                                             "message_id": reply_mid, "content_sha": fingerprint}),
            "conversation": _fields(new_conv) if new_conv else False,
            "user_message": _fields({"id": user_mid, "conversation_id": conversation_id, "user_id": user.id,
                                     "role": "user", "content": content, "state": "done", "created_at": now,
                                     "client_message_id": client_message_id or "", "idem_key": idem_key}),
            "reply_message": queued_reply_fields(request, user_mid, job_id, now),
            "queued_event": json.dumps({"state": "queued"}),
            "max_active": int(self.config["MAX_ACTIVE_GENERATIONS"]),
        }
        if batch_id is not None:
            spec.update(index="batchconvs", exempt_active=True)
            spec["reply_message"] += ["batch_id", batch_id]
        if cached is not None:
            spec["cached"] = {
                "text": cached.text,
                "delta_event": json.dumps({"text": cached.text}),
                "fin": {"finish_reason": cached.finish_reason, "usage": cached.usage, "cached": True,
                        "meta": {"cost_saved_micros": cached.cost_saved_micros}},
            }
        out = ext.replies.send(user.id, conversation_id, user_mid, reply_mid, spec)
        # a refusal here comes after before_generation: plugins are told, to let go of holds
        if out[0] == "duplicate":
            generation_refused(ext, request, "duplicate")
            return self._duplicate(out[1], fingerprint, client_message_id)
        if out[0] != "ok":
            error: ChatAppError = NotFound("No such conversation.", code="conversation_not_found")
            if out[0] == "too_many":
                error = RateLimited(f"You have {self.config['MAX_ACTIVE_GENERATIONS']} replies in progress; wait "
                                    "for one to finish (or stop one) and send again.", code="too_many_generations",
                                    retry_after=2)
            generation_refused(ext, request, error.code)
            raise error
        if cached is None:
            try:
                ext.queue.enqueue(reply_mid, job_id, batch=batch_id is not None)
            except Exception:  # the reply is stored with a lease: the reaper enqueues it
                log.exception("enqueue failed for %s; the reaper will retry", reply_mid)
        return Accepted(conversation_id, user_mid, reply_mid, "done" if cached else "queued",
                        client_message_id, cached=cached is not None)

    @staticmethod
    def _duplicate(stored: str, fingerprint: str, client_message_id: str | None) -> Accepted:
        """The earlier send with this client_message_id; 409 if its content was different."""
        seen = json.loads(stored)
        if seen.pop("content_sha", fingerprint) != fingerprint:
            raise Conflict("This client_message_id was already used for a different message; use a new id.",
                           code="idempotency_conflict", details={"client_message_id": client_message_id})
        return Accepted(**seen, state="queued", client_message_id=client_message_id, duplicate=True)

    def cancel(self, user: User, mid: str, cid: str | None = None) -> dict[str, Any]:
        """Stop a reply; returns the message as it stands."""
        h = self.ext.store.message(user.id, mid, cid)
        if h["role"] != "assistant":
            raise ChatAppError("Only replies can be stopped.", code="not_a_reply", status=409)
        if self.ext.replies.cancel(user.id, mid) == "not_found":
            raise NotFound("No such message.", code="message_not_found")
        return self.ext.store.message_view(self.ext.store.message(user.id, mid))

    def wait(self, user: User, mid: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the reply ends (or ``WAIT_TIMEOUT_S``); returns the message as it stands."""
        self.ext.relay.wait(mid, self.config["WAIT_TIMEOUT_S"] if timeout is None else timeout)
        return self.ext.store.message_view(self.ext.store.message(user.id, mid))
