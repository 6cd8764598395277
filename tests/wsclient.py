"""A small real websocket client for tests (websocket-client) that collects frames."""
from __future__ import annotations

import json
import time
from typing import Any

import websocket


class WS:
    def __init__(self, url: str, key: str | None = None, headers: list[str] | None = None, timeout: float = 10,
                 origin: str | None = None) -> None:
        hdrs = list(headers or [])
        if key:
            hdrs.append(f"Authorization: Bearer {key}")
        extra = {"origin": origin} if origin else {"suppress_origin": True}
        self.conn = websocket.create_connection(url, header=hdrs, timeout=timeout, **extra)

    def send(self, frame: dict[str, Any] | str) -> None:
        self.conn.send(frame if isinstance(frame, str) else json.dumps(frame))

    def recv(self, timeout: float = 10) -> dict[str, Any]:
        self.conn.settimeout(timeout)
        return json.loads(self.conn.recv())

    def until(self, predicate, timeout: float = 15) -> list[dict[str, Any]]:
        """Frames up to and including the first that satisfies ``predicate``."""
        frames = []
        deadline = time.time() + timeout
        while True:
            frame = self.recv(max(0.1, deadline - time.time()))
            frames.append(frame)
            if predicate(frame):
                return frames

    def reply_frames(self, mid: str, timeout: float = 15) -> list[dict[str, Any]]:
        """Frames of reply ``mid`` until its terminal frame (others are ignored)."""
        out = []
        for f in self.until(lambda f: f.get("message_id") == mid and f["type"] in ("done", "error"), timeout):
            if f.get("message_id") == mid:
                out.append(f)
        return out

    def close(self) -> None:
        self.conn.close()


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f["text"] for f in frames if f["type"] == "delta")


def assert_gap_free(frames: list[dict[str, Any]], start: int = 1) -> None:
    seqs = [f["seq"] for f in frames if "seq" in f]
    assert seqs == list(range(start, start + len(seqs))), seqs
