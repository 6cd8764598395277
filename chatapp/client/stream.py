"""Follow one reply over the websocket: print deltas in ``seq`` order exactly once, resume after a
drop with ``subscribe``/``after_seq``, and turn Ctrl-C into a ``cancel`` frame (DESIGN.md §6)."""
from __future__ import annotations

import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from chatapp.client.api import ApiError
from chatapp.client.wsconn import Dropped, Socket

#: a silent socket gets a JSON ping after this long, and counts as dead if the pong takes longer
KEEPALIVE_S = 15.0
PONG_TIMEOUT_S = 10.0
#: how long to keep trying to reconnect after a drop before giving up on the reply
RECONNECT_FOR_S = 30.0
#: an event missing from the sequence for this long means a broken subscription: subscribe again
GAP_RESUBSCRIBE_S = 5.0


@dataclass
class Reply:
    """What the client knows about one reply; ``as_json`` is the ``send --json`` output."""

    conversation_id: str | None = None
    message_id: str | None = None
    content: str = ""
    state: str = "queued"
    finish_reason: str | None = None
    cost_usd: float = 0.0
    cached: bool = False
    usage: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    last_seq: int = 0
    #: the user pressed Ctrl-C while it streamed
    interrupted: bool = False

    @property
    def stopped(self) -> bool:
        """Ctrl-C ended it early (a reply that finished first anyway is not "stopped")."""
        return self.interrupted and self.state not in ("done", "failed")

    @property
    def finished(self) -> bool:
        """It has ended: nothing more will come."""
        return self.state in ("done", "failed", "cancelled")

    def as_json(self) -> dict[str, Any]:
        """The fields a script wants, plus ``error`` when it failed."""
        out = {"conversation_id": self.conversation_id, "message_id": self.message_id, "content": self.content,
               "state": self.state, "finish_reason": self.finish_reason, "cost_usd": self.cost_usd,
               "cached": self.cached, "usage": self.usage}
        if self.error:
            out["error"] = self.error
        return out


class Interrupts:
    """While a reply streams, Ctrl-C is counted instead of raising KeyboardInterrupt, so it can
    never land half-way through applying an event (and so print text twice or lose some)."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        self.count += 1

    def __enter__(self) -> "Interrupts":
        # signal handlers can only be set from the main thread (tests may call us from others)
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


def notice(text: str) -> None:
    """A status line on stderr, on a line of its own."""
    sys.stderr.write(f"\n{text}\n")
    sys.stderr.flush()


class ReplyFollower:
    """Sends one ``send`` frame and follows that reply to its end on ``sock``."""

    def __init__(self, sock: Socket, frame: dict[str, Any], on_text: Callable[[str], None] | None = None) -> None:
        self.sock = sock
        self.frame = {**frame, "type": "send"}
        # the same client_message_id on a resent send returns the original reply (idempotent)
        self.frame.setdefault("client_message_id", f"cli-{uuid.uuid4().hex}")
        self.on_text = on_text
        self.reply = Reply(conversation_id=frame.get("conversation_id"))
        self.pending: dict[int, dict[str, Any]] = {}
        self.gap_since: float | None = None
        self.cancel_sent = False

    # -- frames out ------------------------------------------------------------------------------
    def resume_frame(self) -> dict[str, Any]:
        """After a drop: subscribe past what was applied, or resend the send if it was never accepted."""
        if self.reply.message_id:
            return {"type": "subscribe", "message_id": self.reply.message_id, "after_seq": self.reply.last_seq}
        return self.frame

    def reconnect(self, interrupts: Interrupts) -> None:
        """Open a new socket and resume; retries with backoff for up to RECONNECT_FOR_S."""
        self.pending.clear()
        self.gap_since = None
        deadline = time.monotonic() + RECONNECT_FOR_S
        delay, failed = 0.0, False
        while True:
            time.sleep(delay)
            try:
                self.sock.connect()
                self.sock.send(self.resume_frame())
                if failed:
                    notice("[reconnected]")
                return
            except (ApiError, Dropped) as exc:
                if isinstance(exc, ApiError) and exc.status in (401, 403):
                    raise
                if interrupts.count or time.monotonic() > deadline:
                    mid = self.reply.message_id
                    raise ApiError("connection_lost", "Lost the connection to the server" + (
                        f"; the reply goes on there (message {mid})." if mid else ".")) from None
                if not failed:
                    notice(f"[connection lost; reconnecting to {self.sock.api.base_url} ...]")
                failed = True
                delay = min(4.0, max(0.25, delay * 2))

    def send(self, frame: dict[str, Any], interrupts: Interrupts) -> None:
        """Send a frame, reconnecting (and resuming) if the socket is gone."""
        try:
            self.sock.send(frame)
        except Dropped:
            self.reconnect(interrupts)  # resends the send, or subscribes: that covers sends and pings
            if frame.get("type") == "cancel":
                self.send(frame, interrupts)

    # -- frames in -------------------------------------------------------------------------------
    def apply(self, event: dict[str, Any]) -> None:
        """Apply one in-order event of our reply."""
        reply, kind = self.reply, event.get("type")
        reply.last_seq = int(event["seq"])
        if kind == "status":
            reply.state = "generating" if event.get("state") != "queued" else "queued"
        elif kind == "delta":
            text = str(event.get("text", ""))
            reply.content += text
            reply.state = "generating"
            if self.on_text and text:
                self.on_text(text)
        elif kind == "done":
            reply.finish_reason = event.get("finish_reason")
            reply.state = "cancelled" if reply.finish_reason == "cancelled" else "done"
            reply.usage = event.get("usage") or {}
            reply.cost_usd = float(event.get("cost_usd") or 0.0)
            reply.cached = bool(event.get("cached"))
        elif kind == "error":
            reply.state = "failed"
            reply.error = {"code": event.get("code", "failed"), "message": event.get("message", "")}

    def handle(self, frame: dict[str, Any]) -> None:
        """One frame from the socket; frames about other replies are ignored."""
        reply, kind = self.reply, frame.get("type")
        if kind == "accepted" and frame.get("client_message_id") == self.frame["client_message_id"]:
            reply.conversation_id = frame.get("conversation_id")
            reply.message_id = frame.get("message_id")
            return
        ours = (reply.message_id is not None and frame.get("message_id") == reply.message_id) or \
            (frame.get("client_message_id") == self.frame["client_message_id"])
        if not ours:
            return
        if kind == "error" and "seq" not in frame:
            # a refused send, subscribe or cancel: nothing more will come for this reply
            reply.state = "failed"
            reply.error = {"code": frame.get("code", "error"), "message": frame.get("message", "")}
            return
        if "seq" not in frame:
            return
        seq = int(frame["seq"])
        if seq <= reply.last_seq:
            return  # already applied (a replay overlapping what we had)
        self.pending[seq] = frame
        while reply.last_seq + 1 in self.pending and not reply.finished:
            self.apply(self.pending.pop(reply.last_seq + 1))
        self.gap_since = (self.gap_since or time.monotonic()) if self.pending and not reply.finished else None

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> Reply:
        """Send, follow to the end, return the reply. First Ctrl-C cancels the reply and waits for
        its end; a second one stops waiting (the server still ends it)."""
        if not self.sock.connected:
            self.sock.connect()  # outside Interrupts: Ctrl-C during a slow connect just aborts
        with Interrupts() as interrupts:
            self.send(self.frame, interrupts)
            last_heard, ping_at = time.monotonic(), None
            while not self.reply.finished:
                if interrupts.count:
                    self.reply.interrupted = True
                    if interrupts.count > 1:
                        break
                    if self.reply.message_id and not self.cancel_sent:
                        self.cancel_sent = True
                        self.send({"type": "cancel", "message_id": self.reply.message_id}, interrupts)
                try:
                    frame = self.sock.receive(0.25)
                except Dropped:
                    self.reconnect(interrupts)
                    last_heard, ping_at = time.monotonic(), None
                    continue
                now = time.monotonic()
                if frame is None:
                    if ping_at is not None and now - ping_at > PONG_TIMEOUT_S:
                        self.sock.close()  # silent peer: treat as a drop
                        self.reconnect(interrupts)
                        last_heard, ping_at = time.monotonic(), None
                    elif ping_at is None and now - last_heard > KEEPALIVE_S:
                        ping_at = now
                        self.send({"type": "ping"}, interrupts)
                    elif self.gap_since is not None and now - self.gap_since > GAP_RESUBSCRIBE_S:
                        self.pending.clear()
                        self.gap_since = None
                        self.send(self.resume_frame(), interrupts)
                    continue
                last_heard, ping_at = now, None
                self.handle(frame)
        return self.reply


def stream_reply(sock: Socket, frame: dict[str, Any], on_text: Callable[[str], None] | None = None) -> Reply:
    """Send ``frame`` (a ``send`` frame's fields) and follow the reply; see :class:`ReplyFollower`."""
    return ReplyFollower(sock, frame, on_text).run()
