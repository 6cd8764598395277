"""The lifecycle of an assistant reply in Redis, every step one fenced Lua call.

A reply is created ``queued`` with its user message (``send``), taken by one job run at a time
with a fencing token and a lease (``claim``), grows by events only while that token is current
(``append``), and ends exactly once (``finish``, ``cancel``, or the reaper). Events carry a
gap-free ``seq`` and the stored content is always exactly the concatenation of the deltas.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis

from chatapp import fastjson
from chatapp.errors import ChatAppError, GenerationLost
from chatapp.ids import now_ms
from chatapp.models import CANCELLED, DONE, FAILED, GenerationResult, Message, Usage
from chatapp.redis_client import pairs
from chatapp.scripts import Scripts
from chatapp.store import HISTORY_MAX_MESSAGES, turns_oldest_first


#: one stream event as a run writes it: (type, data, the text it adds to the reply)
Event = tuple[str, dict[str, Any], str]


class FencedOut(Exception):
    """This job run no longer owns the reply (it finished, was deleted, or another run took it)."""


@dataclass
class ReplySource:
    """What a reply's request is rendered from, read with its claim: its record, its conversation
    (empty if deleted), the user's name, and the usable turns before it within ``budget_tokens``,
    oldest first."""
    record: dict[str, str]
    conversation: dict[str, str]
    user_name: str
    history: list[Message]
    budget_tokens: int


@dataclass
class Claim:
    status: str  # ok | busy | finished | gone | cancelled | failed
    attempt: int = 0
    emitted: str = ""
    resume_state: dict[str, Any] = field(default_factory=dict)
    source: ReplySource | None = None


_json = fastjson.dumps


def _events_json(events: list[Event]) -> str:
    """Events as the append and finish scripts take them: a JSON array of [type, data JSON, text]."""
    return _json([[event_type, _json(data), text] for event_type, data, text in events])


def terminal(
    state: str,
    *,
    finish_reason: str | None = None,
    usage: Usage | None = None,
    cost_micros: int = 0,
    cached: bool = False,
    error: ChatAppError | None = None,
    meta: dict[str, Any] | None = None,
    stream_ttl: int = 86400,
) -> dict[str, Any]:
    """The argument every finishing script takes: record fields plus the terminal event."""
    usage = usage or Usage()
    if state == FAILED:
        error = error or ChatAppError()
        event_type = "error"
        event_data = {"code": error.code, "message": error.message}
    else:
        event_type = "done"
        event_data = {
            "finish_reason": finish_reason or ("cancelled" if state == CANCELLED else "stop"),
            "usage": usage.to_dict(),
            "cost_usd": cost_micros / 1_000_000,
            "cached": cached,
        }
    return {
        "state": state,
        "finish_reason": event_data.get("finish_reason", ""),
        "usage": _json(usage.to_dict()),
        "cost_micros": int(cost_micros),
        "cached": "1" if cached else "0",
        "error": _json(error.to_dict()["error"]) if error else "",
        "meta": _json(meta or {}),
        "event_type": event_type,
        "event_data": _json(event_data),
        "now": now_ms(),
        "stream_ttl": int(stream_ttl),
    }


class Replies:
    """Reply writes for one Redis client; every method is a single atomic script call."""

    def __init__(self, client: redis.Redis, scripts: Scripts, prefix: str, config: dict[str, Any]) -> None:
        self.redis = client
        self.scripts = scripts
        self.prefix = prefix
        self.lease_ms = int(float(config["LEASE_TTL_S"]) * 1000)
        self.grace_ms = int(float(config["QUEUE_GRACE_S"]) * 1000)
        self.max_attempts = int(config["MAX_ATTEMPTS"])
        self.stream_ttl = int(config["STREAM_TTL_S"])
        self.history_budget = int(config["HISTORY_TOKEN_BUDGET"])
        # what claim and reap end a reply with when they must: the same each time but for the
        # time, which those scripts fill in, so they are encoded once
        self._fallback_fins = [self._lost_fin(), self._fin(CANCELLED, finish_reason="cancelled")]

    # -- fins -----------------------------------------------------------------------------
    def _fin(self, state: str, **kwargs: Any) -> str:
        return _json(terminal(state, stream_ttl=self.stream_ttl, **kwargs))

    def _lost_fin(self) -> str:
        return self._fin(FAILED, error=GenerationLost())

    # -- web side -------------------------------------------------------------------------
    def send(self, uid: str, cid: str, user_mid: str, reply_mid: str, spec: dict[str, Any]) -> list[str]:
        """Store a user message and its reply atomically; see lua/send.lua for ``spec``."""
        if spec.get("cached"):
            spec["cached"]["fin"] = terminal(DONE, stream_ttl=self.stream_ttl, **spec["cached"]["fin"])
        else:
            spec["lease_deadline"] = now_ms() + self.grace_ms
        return self.scripts.send(args=[self.prefix, uid, cid, user_mid, reply_mid, now_ms(), _json(spec)])

    def regenerate(self, uid: str, cid: str, expect_mid: str, reply_mid: str, spec: dict[str, Any]) -> list[str]:
        """Replace the conversation's last (finished) reply with a queued new version; see
        lua/regenerate.lua for ``spec`` and the answers."""
        spec["lease_deadline"] = now_ms() + self.grace_ms
        return self.scripts.regenerate(args=[self.prefix, uid, cid, expect_mid, reply_mid, now_ms(), _json(spec)])

    def cancel(self, uid: str, mid: str) -> str:
        """Stop a reply: 'cancelled' (ended here), 'requested' (its job will stop it),
        'finished' (already over) or 'not_found'."""
        out = self.scripts.cancel(args=[self.prefix, mid, uid, self._fin(CANCELLED, finish_reason="cancelled")])
        return out[0]

    # -- worker side ----------------------------------------------------------------------
    def claim(self, mid: str, token: str) -> Claim:
        """Take the reply for this run and read what its request is rendered from, in one step."""
        return self.read_claim(self.scripts.claim(args=self.claim_args(mid, token)))

    def claim_args(self, mid: str, token: str) -> list[Any]:
        """The claim script's arguments (for a caller that sends it in a pipeline of its own)."""
        return [self.prefix, mid, token, now_ms(), self.lease_ms, self.max_attempts, *self._fallback_fins,
                self.history_budget, HISTORY_MAX_MESSAGES]

    def read_claim(self, out: list[Any]) -> Claim:
        """The claim script's answer as a ``Claim``."""
        if out[0] != "ok":
            return Claim(out[0])
        source = ReplySource(pairs(out[4]), pairs(out[5]), out[6], turns_oldest_first(out[7]), self.history_budget)
        return Claim("ok", int(out[1]), out[2], json.loads(out[3]) if out[3] else {}, source)

    def append(self, mid: str, token: str, events: list[Event]) -> int:
        """Append (type, data, text) events; raises ``FencedOut`` if this run lost the reply."""
        seq = self.scripts.append(args=[self.prefix, mid, token, _events_json(events)])
        if seq == -1:
            raise FencedOut(mid)
        return seq

    def append_many(self, writes: list[tuple[str, str, list[Event]]]) -> list[Any]:
        """Several runs' appends, (mid, token, events) each, in one round trip. Returns per write
        its last seq, -1 if that run was fenced out, or the error it hit."""
        out = self._pipelined_appends(writes)
        missing = [i for i, o in enumerate(out) if isinstance(o, redis.exceptions.NoScriptError)]
        if missing:  # Redis lost its script cache (a restart): those were not written; load it, write them
            self.redis.script_load(self.scripts.append.script)
            for i, retried in zip(missing, self._pipelined_appends([writes[i] for i in missing])):
                out[i] = retried
        return out

    def _pipelined_appends(self, writes: list[tuple[str, str, list[Event]]]) -> list[Any]:
        with self.redis.pipeline(transaction=False) as pipe:
            for mid, token, events in writes:
                # EVALSHA directly: a Script in a pipeline costs a SCRIPT EXISTS round trip each time
                pipe.evalsha(self.scripts.append.sha, 0, self.prefix, mid, token, _events_json(events))
            return pipe.execute(raise_on_error=False)

    def save_state(self, mid: str, token: str, state: dict[str, Any]) -> None:
        self.scripts.save_state(args=[self.prefix, mid, token, _json(state)])

    def finish(self, mid: str, token: str, result: GenerationResult, events: list[Event] | None = None) -> bool:
        """Write the run's last ``events``, then end the reply with ``result``, in one step; True
        only for the one run that did it (a fenced-out run writes nothing)."""
        return self.scripts.finish(args=self.finish_args(mid, token, result, events)) != -1

    def finish_args(self, mid: str, token: str, result: GenerationResult,
                    events: list[Event] | None = None) -> list[Any]:
        """The finish script's arguments (for a caller that sends it in a pipeline of its own; it
        answers -1 when this run was fenced out)."""
        error = None
        if result.state == FAILED:
            err = result.error or {}
            error = ChatAppError(err.get("message"), code=err.get("code"), details=err.get("details"))
        fin = self._fin(
            result.state,
            finish_reason=result.finish_reason,
            usage=result.usage,
            cost_micros=result.cost.micros if result.cost else 0,
            cached=result.cached,
            error=error,
            meta={**result.meta, "attempt": result.attempt, "first_token_at": result.first_token_at,
                  "started_at": result.started_at, "finished_at": result.finished_at,
                  "cost_breakdown": result.cost.breakdown if result.cost else {}},
        )
        return [self.prefix, mid, token, fin, _events_json(events or [])]

    def renew(self, worker_id: str, held: dict[str, str], worker_ttl_ms: int) -> dict[str, str]:
        """Renew leases of ``held`` {mid: token}; returns {mid: 'ok'|'cancel'|'lost'}."""
        now = now_ms()
        args: list[Any] = [self.prefix, now, self.lease_ms, worker_id, now + worker_ttl_ms]
        mids = list(held)
        for mid in mids:
            args += [mid, held[mid]]
        return dict(zip(mids, self.scripts.renew(args=args)))

    def due(self, limit: int = 100) -> list[str]:
        """Replies whose lease or queue deadline has passed."""
        return self.redis.zrangebyscore(self.prefix + "leases", "-inf", now_ms(), start=0, num=limit)

    def reap(self, mid: str) -> str:
        out = self.scripts.reap(args=[
            self.prefix, mid, now_ms(), self.grace_ms, self.max_attempts, *self._fallback_fins,
        ])
        return out[0]
