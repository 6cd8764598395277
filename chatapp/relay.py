"""One reader per web process: follows the event firehose and hands each reply's events to the
sockets (and ``?wait=true`` requests) subscribed to it, in ``seq`` order, each exactly once.

A subscription first registers (buffering live events), then replays the reply's own stream with
XRANGE, then flushes the buffer; ``seq`` de-duplicates the overlap. A gap (a lagging reader, a
trimmed firehose, a Redis blip) is filled from the reply's stream, and idle subscriptions are
re-checked every few seconds, so nothing is lost even when the firehose is.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable

import redis

log = logging.getLogger(__name__)

Frame = dict[str, Any]
Sink = Callable[[Frame], None]
TERMINAL_EVENTS = {"done", "error"}


def to_frame(mid: str, seq: int, event_type: str, data: str) -> Frame:
    return {"type": event_type, "message_id": mid, "seq": seq, **json.loads(data)}


class Subscription:
    """One listener on one reply. ``sink`` must not block (it is called from the reader thread)."""

    def __init__(self, relay: "Relay", mid: str, after_seq: int, sink: Sink) -> None:
        self.relay, self.mid, self.last_seq, self.sink = relay, mid, after_seq, sink
        self.lock = threading.Lock()
        self.ready = False
        self.closed = False
        self.pending: list[tuple[int, str, str]] = []
        self.touched = time.monotonic()

    def offer(self, seq: int, event_type: str, data: str) -> None:
        with self.lock:
            if self.closed:
                return
            if not self.ready:
                self.pending.append((seq, event_type, data))
                return
            self._deliver(seq, event_type, data)

    def _deliver(self, seq: int, event_type: str, data: str) -> None:
        if seq <= self.last_seq or self.closed:
            return
        if seq > self.last_seq + 1:
            for entry in self.relay.read_stream(self.mid, self.last_seq, seq - 1):
                self._deliver(*entry)
            if seq != self.last_seq + 1:
                return  # the gap could not be filled; the sweep retries from last_seq
        self.last_seq = seq
        self.touched = time.monotonic()
        self.sink(to_frame(self.mid, seq, event_type, data))
        if event_type in TERMINAL_EVENTS:
            self.closed = True
            self.relay.discard(self)

    def catch_up(self) -> None:
        """Replay what the stream holds after ``last_seq``, then switch to live delivery."""
        entries = self.relay.read_stream(self.mid, self.last_seq)
        with self.lock:
            for entry in entries:
                self._deliver(*entry)
            self.ready = True
            for entry in sorted(self.pending):
                self._deliver(*entry)
            self.pending = []
            if not entries and not self.closed:
                self._check_finished()

    def _check_finished(self) -> None:
        state, final_seq = self.relay.reply_state(self.mid)
        if final_seq and self.last_seq < final_seq:
            # the reply may have ended between the caller's stream read and this one: the record
            # gets final_seq only after the events, so a read now has them all unless they expired
            for entry in self.relay.read_stream(self.mid, self.last_seq):
                self._deliver(*entry)
            if self.closed:
                return
        if state is None:
            self._fail("message_not_found", "The reply no longer exists.")
        elif final_seq and self.last_seq < final_seq:
            self._fail("stream_expired", "This reply's events have expired; fetch the message with "
                       "GET /api/v1/conversations/<cid>/messages/<mid>.")
        elif final_seq:
            self.closed = True
            self.relay.discard(self)

    def _fail(self, code: str, message: str) -> None:
        self.closed = True
        self.relay.discard(self)
        self.sink({"type": "error", "message_id": self.mid, "code": code, "message": message})

    def close(self) -> None:
        with self.lock:
            self.closed = True
        self.relay.discard(self)


class Relay:
    """The process's single firehose reader; start it after fork (it starts on first use)."""

    def __init__(self, client: redis.Redis, prefix: str, block_ms: int = 2000, sweep_s: float = 3.0) -> None:
        self.redis, self.p = client, prefix
        self.block_ms, self.sweep_s = block_ms, sweep_s
        self.subs: dict[str, set[Subscription]] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.last_id = "0-0"

    # -- public -----------------------------------------------------------------------------
    def subscribe(self, mid: str, after_seq: int, sink: Sink) -> Subscription:
        self.start()
        sub = Subscription(self, mid, after_seq, sink)
        with self.lock:
            self.subs.setdefault(mid, set()).add(sub)
        try:
            sub.catch_up()
        except redis.RedisError as exc:
            # Redis blinked during the replay: hand the subscription to the sweep, which replays
            # it from its stream (and flushes what was buffered) once Redis answers, instead of
            # leaving it buffering forever
            log.warning("relay: replay of %s failed (%s); the sweep will resume it", mid, type(exc).__name__)
            with sub.lock:
                sub.ready = True
            sub.touched = 0.0
        return sub

    def wait(self, mid: str, timeout: float) -> Frame | None:
        """Block until the reply ends; returns its terminal frame, or None on timeout."""
        ended = threading.Event()
        last: list[Frame] = []

        def sink(frame: Frame) -> None:
            if frame["type"] in TERMINAL_EVENTS:
                last.append(frame)
                ended.set()

        sub = self.subscribe(mid, 0, sink)
        try:
            ended.wait(timeout)
        finally:
            sub.close()
        return last[0] if last else None

    def discard(self, sub: Subscription) -> None:
        with self.lock:
            group = self.subs.get(sub.mid)
            if group is not None:
                group.discard(sub)
                if not group:
                    del self.subs[sub.mid]

    def subscription_count(self) -> int:
        with self.lock:
            return sum(len(g) for g in self.subs.values())

    def start(self) -> None:
        if self.thread is not None:
            return
        with self.lock:
            if self.thread is not None:
                return
            newest = self.redis.xrevrange(self.p + "events", count=1)
            self.last_id = newest[0][0] if newest else "0-0"
            self.thread = threading.Thread(target=self._run, name="chatapp-relay", daemon=True)
            self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=self.block_ms / 1000 + 2)

    # -- reads ---------------------------------------------------------------------------------
    def read_stream(self, mid: str, after_seq: int, upto_seq: int | None = None) -> list[tuple[int, str, str]]:
        top = f"0-{upto_seq}" if upto_seq is not None else "+"
        entries = self.redis.xrange(f"{self.p}ev:{mid}", min=f"(0-{after_seq}", max=top)
        return [(int(eid.split("-")[1]), f["t"], f["d"]) for eid, f in entries]

    def reply_state(self, mid: str) -> tuple[str | None, int]:
        state, final_seq = self.redis.hmget(f"{self.p}msg:{mid}", "state", "final_seq")
        return state, int(final_seq or 0)

    # -- the reader ----------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.1
        next_sweep = time.monotonic() + self.sweep_s
        while not self.stopping.is_set():
            try:
                response = self.redis.xread({self.p + "events": self.last_id}, block=self.block_ms, count=1000)
                backoff = 0.1
            except redis.RedisError as exc:
                log.warning("relay: Redis read failed (%s); retrying in %.1f s", exc, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                next_sweep = 0  # resync everyone from their streams once Redis is back
                continue
            for _stream, entries in response or []:
                for entry_id, fields in entries:
                    self.last_id = entry_id
                    self._dispatch(fields)
            if time.monotonic() >= next_sweep:
                self._sweep()
                next_sweep = time.monotonic() + self.sweep_s

    def _dispatch(self, fields: dict[str, str]) -> None:
        with self.lock:
            group = list(self.subs.get(fields["m"], ()))
        for sub in group:
            try:
                sub.offer(int(fields["s"]), fields["t"], fields["d"])
            except Exception:  # a broken sink must not stop the reader for everyone
                log.exception("relay: delivering to a subscriber failed")
                sub.close()

    def _sweep(self) -> None:
        """Re-read idle subscriptions from their own streams (covers anything the firehose lost)."""
        idle_before = time.monotonic() - self.sweep_s
        with self.lock:
            idle = [s for g in self.subs.values() for s in g if s.ready and s.touched < idle_before]
        for sub in idle:
            try:
                sub.touched = time.monotonic()
                sub.catch_up()
            except redis.RedisError:
                log.warning("relay: sweep could not reach Redis")
                return
            except Exception:
                log.exception("relay: sweep failed for %s", sub.mid)
