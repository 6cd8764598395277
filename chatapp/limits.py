"""Per-user request rates: fixed one-minute windows in Redis, shared by every web process."""
from __future__ import annotations

import time

import redis

from chatapp.errors import RateLimited


def check_rate(client: redis.Redis, prefix: str, user_id: str, kind: str, per_minute: int) -> None:
    """Count one ``kind`` action for ``user_id``; 429 with Retry-After past ``per_minute``."""
    if per_minute <= 0:
        return
    now = time.time()
    window = int(now // 60)
    key = f"{prefix}rate:{user_id}:{kind}:{window}"
    with client.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, 120)
        count, _ = pipe.execute()
    if count > per_minute:
        retry_after = max(1, int(60 - now % 60))
        raise RateLimited(f"Too many {kind} requests: at most {per_minute} a minute. Retry in {retry_after} s.",
                          retry_after=retry_after, details={"limit_per_minute": per_minute, "kind": kind})
