"""One websocket connection: frames in, events out, any number of replies followed at once.

The handler thread is the socket's only sender. A reader thread turns incoming frames into work
items, and the relay's reader drops event frames into the same bounded queue without ever
blocking; a socket too slow to drain it is closed (code 1013) and resumes from its last ``seq``.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

import redis
from simple_websocket import ConnectionClosed

from chatapp import metrics
from chatapp.auth import User
from chatapp.errors import ChatAppError, InvalidRequest, NotFound, TooLarge, Unavailable
from chatapp.relay import Subscription
from chatapp.schemas import FRAME_SCHEMAS, load, parse_json

if TYPE_CHECKING:  # pragma: no cover
    from chatapp.extension import ChatApp

log = logging.getLogger(__name__)

CLOSE_TRY_AGAIN = 1013
CLOSE_SERVICE_RESTART = 1012


class SocketRegistry:
    """The process's open sockets, so a shutdown can tell each one to reconnect elsewhere."""

    def __init__(self) -> None:
        self.sessions: set["SocketSession"] = set()
        self.lock = threading.Lock()

    def add(self, session: "SocketSession") -> None:
        with self.lock:
            self.sessions.add(session)

    def remove(self, session: "SocketSession") -> None:
        with self.lock:
            self.sessions.discard(session)

    def count(self, user_id: str | None = None) -> int:
        with self.lock:
            return sum(1 for s in self.sessions if user_id is None or s.user.id == user_id)

    def restart_all(self) -> None:
        """Ask every socket to close with 1012 (service restart): clients reconnect, possibly to
        another process, and resume from their last seq. Never blocks."""
        with self.lock:
            sessions = list(self.sessions)
        for session in sessions:
            session.restart()


class SocketSession:
    def __init__(self, ws: Any, user: User, ext: "ChatApp") -> None:
        self.ws, self.user, self.ext = ws, user, ext
        self.inbox: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=int(ext.config["SOCKET_QUEUE_SIZE"]))
        self.subs: dict[str, Subscription] = {}
        self.overflowed = False
        self.restarting = False

    # -- loop -----------------------------------------------------------------------------------
    def restart(self) -> None:
        self.restarting = True
        try:
            self.inbox.put_nowait(("restart", None))
        except queue.Full:
            self.overflowed = True  # closes too; the client resumes either way

    def run(self) -> None:
        registry = self.ext.sockets
        registry.add(self)
        metrics.websocket_opened(self.ext)
        reader = threading.Thread(target=self._read, name="chatapp-ws-reader", daemon=True)
        reader.start()
        try:
            while True:
                kind, item = self.inbox.get()
                if kind == "closed":
                    break
                if kind == "restart":
                    self.ws.close(CLOSE_SERVICE_RESTART, "server restarting: reconnect and subscribe from your last seq")
                    break
                if self.overflowed:
                    self.ws.close(CLOSE_TRY_AGAIN, "too slow: reconnect and subscribe from your last seq")
                    break
                if kind == "frame":
                    self._handle(item)
                else:
                    self._send(item)
        except ConnectionClosed:
            pass
        finally:
            registry.remove(self)
            metrics.websocket_opened(self.ext, -1)
            for sub in list(self.subs.values()):
                sub.close()

    def _read(self) -> None:
        try:
            while True:
                data = self.ws.receive()
                if data is None:
                    continue
                metrics.websocket_frame(self.ext, "in")
                self.inbox.put(("frame", data))
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("websocket reader failed")
        self.inbox.put(("closed", None))

    def _deliver(self, frame: dict[str, Any]) -> None:
        """Relay sink: never blocks the process's single reader."""
        try:
            self.inbox.put_nowait(("event", frame))
        except queue.Full:
            self.overflowed = True

    def _send(self, frame: dict[str, Any]) -> None:
        self.ws.send(json.dumps(frame, ensure_ascii=False, separators=(",", ":")))
        metrics.websocket_frame(self.ext, "out")

    # -- frames ---------------------------------------------------------------------------------
    def _handle(self, raw: Any) -> None:
        frame_ref: dict[str, Any] = {}
        try:
            if not isinstance(raw, str):
                raise InvalidRequest("Send JSON text frames.", code="invalid_frame")
            limit = int(self.ext.config["MAX_WS_FRAME_BYTES"])
            if len(raw) > limit // 4 and len(raw.encode("utf-8")) > limit:
                raise TooLarge(f"Frames may be at most {limit} bytes.", code="frame_too_large",
                               details={"limit_bytes": limit})
            data = parse_json(raw, "The frame")
            if not isinstance(data, dict):
                raise InvalidRequest("Send a JSON object with a 'type'.", code="invalid_frame")
            frame_ref = data
            kind = data.get("type")
            schema = FRAME_SCHEMAS.get(kind) if isinstance(kind, str) else None
            if schema is None:
                raise InvalidRequest(f"Unknown frame type; use one of {sorted(FRAME_SCHEMAS)}.",
                                     code="unknown_frame_type")
            frame = load(schema, data)
            getattr(self, "on_" + frame["type"])(frame)
        except ChatAppError as err:
            self._send_error(err, frame_ref)
        except redis.RedisError:
            self._send_error(Unavailable(), frame_ref)
        except ConnectionClosed:
            raise  # the client went away while we answered: run() ends the session quietly
        except Exception:
            log.exception("websocket frame failed")
            self._send_error(ChatAppError(), frame_ref)

    def _send_error(self, err: ChatAppError, frame: dict[str, Any]) -> None:
        out: dict[str, Any] = {"type": "error", "code": err.code, "message": err.message}
        if isinstance(frame.get("message_id"), str):
            out["message_id"] = frame["message_id"]
        if isinstance(frame.get("client_message_id"), str):
            out["client_message_id"] = frame["client_message_id"]
        if err.details:
            out["details"] = err.details
        self._send(out)

    def on_ping(self, frame: dict[str, Any]) -> None:
        self._send({"type": "pong"})

    def on_send(self, frame: dict[str, Any]) -> None:
        accepted = self.ext.chat.send(
            self.user, conversation_id=frame.get("conversation_id"), content=frame["content"],
            client_message_id=frame.get("client_message_id"), persona=frame.get("persona"),
            params=frame.get("params"),
        )
        self._send({"type": "accepted", "conversation_id": accepted.conversation_id,
                    "user_message_id": accepted.user_message_id, "message_id": accepted.message_id,
                    "client_message_id": accepted.client_message_id})
        self._follow(accepted.message_id, 0)

    def on_subscribe(self, frame: dict[str, Any]) -> None:
        h = self.ext.store.message(self.user.id, frame["message_id"])
        if h["role"] != "assistant":
            raise NotFound("No such reply.", code="message_not_found")
        self._follow(frame["message_id"], frame["after_seq"])

    def on_cancel(self, frame: dict[str, Any]) -> None:
        self.ext.chat.cancel(self.user, frame["message_id"])

    def _follow(self, mid: str, after_seq: int) -> None:
        # forget finished subscriptions so a long-lived socket does not accumulate them
        self.subs = {m: s for m, s in self.subs.items() if not s.closed}
        old = self.subs.pop(mid, None)
        if old is not None:
            old.close()
        self.subs[mid] = self.ext.relay.subscribe(mid, after_seq, self._deliver)
