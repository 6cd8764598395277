"""Sliding-window request limits per endpoint and route, like RunPod's per-10-s limits."""
from __future__ import annotations

import threading
import time
from collections import deque

from chatapp.runpod_emulator.config import RateLimits


class RateLimiter:
    """Counts calls per (endpoint, route) over the last ``window_s`` seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hits: dict[tuple[str, str], deque[float]] = {}

    def hit(self, endpoint_id: str, route: str, limits: RateLimits,
            now: float | None = None) -> float | None:
        """Record a call; returns None if allowed, else the seconds to wait (for Retry-After)."""
        limit = limits.limit_for(route)
        if limit is None:
            return None
        now = time.monotonic() if now is None else now
        with self._lock:
            hits = self._hits.setdefault((endpoint_id, route), deque())
            while hits and hits[0] <= now - limits.window_s:
                hits.popleft()
            if len(hits) >= limit:
                return max(0.001, hits[0] + limits.window_s - now)
            hits.append(now)
            return None
