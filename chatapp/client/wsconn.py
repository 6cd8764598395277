"""One websocket to ``/ws`` over ``simple_websocket.Client``, with the timeouts, daemon threads and
refusal messages a command-line client needs (the library has none of the three)."""
from __future__ import annotations

import json
import socket
import threading
from typing import Any

import simple_websocket
from simple_websocket.errors import SimpleWebsocketError

# simple-websocket's own protocol layer, for a handshake that reports why it was refused
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.utilities import ProtocolError

from chatapp.client.api import ApiClient, ApiError, connection_error

# socket.setdefaulttimeout is process-wide: hold it only while one connect runs
_default_timeout_lock = threading.Lock()


class Dropped(Exception):
    """The socket closed or broke; the caller reconnects and resumes."""


class _DaemonThread(threading.Thread):
    """The library's reader thread must not keep the process alive after ``main`` returns."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = True


class Refused(Exception):
    """The server answered the upgrade with an HTTP error; carries its status and body."""

    def __init__(self, status: int, body: bytes, retry_after: str | None) -> None:
        super().__init__(f"refused with HTTP {status}")
        self.status, self.body, self.retry_after = status, body, retry_after


class _Client(simple_websocket.Client):
    """``simple_websocket.Client`` whose handshake reads a refusal's body (the canonical error
    says why: bad key, too many sockets) and gives up on a closed or silent connection."""

    def handshake(self) -> None:
        try:
            self.sock.send(self.ws.send(Request(host=self.host, target=self.path, subprotocols=self.subprotocols,
                                                extra_headers=self.extra_headeers)))
            accepted = self._read_answer()
        except BaseException:
            self.sock.close()
            raise
        self.subprotocol = accepted.subprotocol
        # the reader thread blocks on recv from here on; liveness is checked with JSON pings instead
        self.sock.settimeout(None)
        self.connected = True

    def _read_answer(self) -> AcceptConnection:
        status, retry_after, body = 0, None, b""
        while True:
            data = self.sock.recv(self.receive_bytes)
            self.ws.receive_data(data or None)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    return event  # later bytes stay buffered in self.ws for the reader thread
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    retry_after = next((v.decode() for k, v in event.headers if k.lower() == b"retry-after"), None)
                    if not event.has_body:
                        raise Refused(status, b"", retry_after)
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        raise Refused(status, body, retry_after)
            if not data:  # the library's own loop spins forever here
                if status:
                    raise Refused(status, body, retry_after)
                raise ConnectionResetError("the server closed the connection during the websocket handshake")


class Socket:
    """A websocket that can be opened again after a drop. Frames are JSON objects."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self.ws: _Client | None = None

    @property
    def connected(self) -> bool:
        """Open as far as we know (a silent dead peer is found by the caller's pings)."""
        return self.ws is not None and self.ws.connected

    def connect(self) -> None:
        """Open a new socket, replacing any old one. Raises :class:`ApiError` when refused or
        unreachable."""
        self.close()
        headers = {"Authorization": f"Bearer {self.api.key}", "User-Agent": "chatapp-cli"}
        try:
            with _default_timeout_lock:
                previous = socket.getdefaulttimeout()
                socket.setdefaulttimeout(self.api.timeout)  # the library's connect() takes no timeout
                try:
                    self.ws = _Client(self.api.ws_url, headers=headers, thread_class=_DaemonThread)
                finally:
                    socket.setdefaulttimeout(previous)
        except Refused as exc:
            raise ApiError.from_body(exc.status, exc.body, exc.retry_after) from None
        except OSError as exc:
            raise connection_error(self.api.base_url, exc) from None
        except (ProtocolError, SimpleWebsocketError):
            raise ApiError("websocket_failed", f"{self.api.ws_url} did not answer as a websocket; "
                                               "check --url.") from None

    def send(self, frame: dict[str, Any]) -> None:
        """Send one frame; :class:`Dropped` when the socket is gone."""
        if self.ws is None:
            raise Dropped("not connected")
        try:
            self.ws.send(json.dumps(frame))
        except (simple_websocket.ConnectionClosed, OSError) as exc:
            raise Dropped(str(exc)) from None

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next frame, or None after ``timeout`` seconds; :class:`Dropped` when closed.
        Frames that are not JSON objects are skipped (returned as None)."""
        if self.ws is None:
            raise Dropped("not connected")
        try:
            raw = self.ws.receive(timeout=timeout)
        except (simple_websocket.ConnectionClosed, OSError) as exc:
            raise Dropped(str(exc)) from None
        if raw is None:
            return None
        try:
            frame = json.loads(raw)
        except ValueError:
            return None
        return frame if isinstance(frame, dict) else None

    def close(self) -> None:
        """Close quietly; safe to call twice."""
        ws, self.ws = self.ws, None
        if ws is not None:
            try:
                ws.close()
            except (simple_websocket.ConnectionClosed, OSError):
                pass
