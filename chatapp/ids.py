"""Unguessable ids and the millisecond clock every record uses."""
from __future__ import annotations

import secrets
import time
from datetime import datetime, timezone


def new_id(prefix: str) -> str:
    """An unguessable id like ``c_3q7...`` (128 random bits, URL-safe, no ':')."""
    return f"{prefix}_{secrets.token_urlsafe(16)}"


def now_ms() -> int:
    return int(time.time() * 1000)


def utc_day(ts: float) -> str:
    """The UTC day of a time in seconds, e.g. ``2026-12-07``: how daily keys are named."""
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def iso(ms: int | str | None) -> str | None:
    """Milliseconds since the epoch -> ISO 8601 UTC with a Z."""
    if ms in (None, ""):
        return None
    dt = datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")
