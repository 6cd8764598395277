"""The finished-replies outbox: runs ``after_generation`` once per reply, however it ended, and
``after_generation_batch`` once per batch of them.

Every finish (by a job, by Stop while queued, by the reaper, a cache hit) appends the reply's id
to one stream in the same atomic step. Worker processes read it as a consumer group, call the
hook, then acknowledge; entries a dead worker left unacknowledged are claimed by another after
``CLAIM_IDLE_MS``. So the hook runs once per reply, and at least once if a worker dies mid-hook.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import redis

from chatapp import metrics
from chatapp.chat import request_for_reply, result_from_record
from chatapp.errors import ChatAppError
from chatapp.models import ChatRequest, FinishedReply, GenerationResult, Persona

if TYPE_CHECKING:  # pragma: no cover
    from chatapp.extension import ChatApp

log = logging.getLogger(__name__)

GROUP = "after_generation"
CLAIM_IDLE_MS = 60_000
#: entries handled per read at most
BATCH = 50
#: after a read that was not full, wait this long before the next one while this process runs
#: replies, so that under load a read takes many entries: a batch costs five round trips (read,
#: record fetch, the usage and budget scripts, acknowledgement) however many replies it holds. At
#: 20 ms a busy worker's batches held ~3 replies and the finisher cost ~0.55 ms of CPU a reply; at
#: 100 ms, ~0.3 ms. The hook runs up to this much later, which nobody waits on. When the worker
#: has no job left the wait ends: no more finishes are coming from it, so the last replies of a
#: burst do not wait (nor does the first reply after a quiet spell).
LINGER_S = 0.1


class RecentRequests:
    """The requests this process's jobs rendered, by reply id, so that the finisher (which
    usually runs in the same process) does not render each one again for the hook: rendering
    reads the conversation, its persona and history. Bounded: the oldest are dropped."""

    def __init__(self, size: int = 4096) -> None:
        self._items: OrderedDict[str, ChatRequest] = OrderedDict()
        self._lock = threading.Lock()
        self.size = size

    def put(self, mid: str, request: ChatRequest) -> None:
        with self._lock:
            self._items[mid] = request
            self._items.move_to_end(mid)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def pop(self, mid: str) -> ChatRequest | None:
        with self._lock:
            return self._items.pop(mid, None)


#: one per process, shared by the job threads and the finisher thread
RENDERED = RecentRequests()


class Finisher(threading.Thread):
    def __init__(self, ext: "ChatApp", consumer: str, block_ms: int = 2000,
                 replies_idle: threading.Event | None = None) -> None:
        """``replies_idle``: set while this process's worker runs no job (``ThreadPoolWorker``
        sets it); while it is clear, the finisher lingers after a read that was not full."""
        super().__init__(name="chatapp-finisher", daemon=True)
        self.ext, self.consumer, self.block_ms = ext, consumer, block_ms
        self.replies_idle = replies_idle
        self.stream = ext.prefix + "finished"
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=self.block_ms / 1000 + 2)

    def ensure_group(self) -> None:
        try:
            self.ext.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def run(self) -> None:
        next_claim = 0.0
        while not self.stopping.is_set():
            try:
                self.ensure_group() if next_claim == 0.0 else None
                if time.monotonic() >= next_claim:
                    self.claim_abandoned()
                    next_claim = time.monotonic() + 15
                batch = self.ext.redis.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=BATCH,
                                                  block=self.block_ms)
                for _stream, entries in batch or []:
                    self.handle_batch(entries)
                    if len(entries) < BATCH:
                        self.linger()
            except redis.RedisError as exc:
                log.warning("finisher: Redis unavailable (%s)", type(exc).__name__)
                next_claim = 0.0
                self.stopping.wait(1)
            except Exception:
                log.exception("finisher failed; continuing")
                self.stopping.wait(1)

    def linger(self) -> None:
        """Wait up to ``LINGER_S`` for more finishes, unless (or until) no reply runs here."""
        (self.replies_idle or self.stopping).wait(LINGER_S)

    def rebuild(self, mid: str, fields: dict[str, str], h: dict[str, str]) -> tuple[ChatRequest, GenerationResult]:
        """The request and result for the hook, given the reply's stored record ``h``: the request
        the job rendered when it ran in this process, else re-rendered from the stored
        conversation, or, when that was deleted meanwhile, from the record the outbox entry
        carries (no prompt, no text)."""
        rendered = RENDERED.pop(mid)
        if h:
            if rendered is not None:
                return rendered, result_from_record(h)
            try:
                request, _provider = request_for_reply(self.ext, mid)
                return request, result_from_record(h)
            except ChatAppError:
                pass
        record = {k[2:]: v for k, v in fields.items() if k.startswith("r.")}
        record.update(id=mid, content="")
        persona = self.ext.catalog.personas.get(record.get("persona", "")) or (
            Persona(name=record["persona"]) if record.get("persona") else None)
        request = ChatRequest(message_id=mid, conversation_id=record.get("conversation_id", ""),
                              user_id=record.get("user_id", ""), provider=record.get("provider", ""),
                              model=record.get("model", ""), messages=[], persona=persona,
                              params=json.loads(record.get("params") or "{}"), cache="skip")
        return request, result_from_record(record)

    def claim_abandoned(self) -> None:
        _next, entries, *_ = self.ext.redis.xautoclaim(self.stream, GROUP, self.consumer, CLAIM_IDLE_MS,
                                                       start_id="0-0", count=20)
        self.handle_batch([(entry_id, fields) for entry_id, fields in entries if fields])  # a trimmed one is empty

    def handle_batch(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        """Run ``after_generation`` for each entry, then ``after_generation_batch`` for them all;
        the records are read, and the handled entries acknowledged, in one round trip each for the
        whole batch."""
        if not entries:
            return
        with self.ext.redis.pipeline(transaction=False) as pipe:
            for _entry_id, fields in entries:
                pipe.hgetall(f"{self.ext.prefix}msg:{fields.get('m', '')}")
            records = pipe.execute()
        handled, finished = [], []
        for (entry_id, fields), record in zip(entries, records):
            ok, reply = self.handle(fields, record)
            if ok:
                handled.append(entry_id)
            if reply is not None:
                finished.append(reply)
        if finished and not self.handle_all(finished):
            return  # none acknowledged: the batch is delivered again
        if handled:
            with self.ext.redis.pipeline(transaction=False) as pipe:
                pipe.xack(self.stream, GROUP, *handled)
                pipe.xdel(self.stream, *handled)
                pipe.execute()

    def handle(self, fields: dict[str, str], record: dict[str, str]) -> tuple[bool, FinishedReply | None]:
        """Run ``after_generation`` for one entry. Returns whether to acknowledge it (not when
        Redis blinked: it is claimed and run again after CLAIM_IDLE_MS rather than skipping this
        reply's cache store, budget and usage) and the reply for the batch hook."""
        mid = fields.get("m", "")
        try:
            request, result = self.rebuild(mid, fields, record)
            metrics.reply_finished(self.ext, fields, result)
            self.ext.pm.hook.after_generation(request=request, result=result, host=self.ext.host)
        except redis.RedisError as exc:
            log.warning("after_generation for %s hit a Redis error (%s); it will run again", mid,
                        type(exc).__name__)
            return False, None
        except Exception:
            log.exception("after_generation failed for %s", mid)
            return True, None
        return True, FinishedReply(request, result)

    def handle_all(self, finished: list[FinishedReply]) -> bool:
        """Run ``after_generation_batch``; False if it hit a Redis error (the batch runs again)."""
        try:
            self.ext.pm.hook.after_generation_batch(replies=finished, host=self.ext.host)
        except redis.RedisError as exc:
            log.warning("after_generation_batch for %d replies hit a Redis error (%s); they will run again",
                        len(finished), type(exc).__name__)
            return False
        except Exception:
            log.exception("after_generation_batch failed for %d replies", len(finished))
        return True
