"""Redis connections: one bounded pool per client per process, whatever the number of sockets.

Two clients share a server: ``text`` (decode_responses=True) for chatapp's own keys and ``raw``
for RQ, which stores pickled bytes. Pools block (up to ``POOL_TIMEOUT_S``) instead of raising
when every connection is busy.
"""
from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any

import redis

POOL_TIMEOUT_S = 5
#: blocking reads (XREAD BLOCK) stay well below this; redis-py 8.1 defaults to 5 s
SOCKET_TIMEOUT_S = 10


def pairs(flat: list[Any]) -> dict[Any, Any]:
    """A flat [field, value, ...] reply (HGETALL inside a script) as a dict."""
    return dict(zip(flat[::2], flat[1::2]))


@dataclass
class RedisClients:
    text: redis.Redis
    raw: redis.Redis

    def close(self) -> None:
        for client in (self.text, self.raw):
            client.close()
            pool = getattr(client, "connection_pool", None)
            if pool is not None:
                pool.disconnect()


def _pool(url: str, max_connections: int, decode: bool, verify_tls: bool) -> redis.BlockingConnectionPool:
    kwargs: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": POOL_TIMEOUT_S,
        "decode_responses": decode,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": 5,
        "health_check_interval": 30,
        # names our connections in CLIENT LIST, so operators (and bench/) can count them per process
        "client_name": f"chatapp-{os.getpid()}",
    }
    if url.startswith("rediss://") and not verify_tls:
        # Heroku Redis presents a self-signed certificate.
        kwargs["ssl_cert_reqs"] = ssl.CERT_NONE
    return redis.BlockingConnectionPool.from_url(url, **kwargs)


def connect(url: str, max_connections: int = 6, verify_tls: bool = False) -> RedisClients:
    """Clients for a Redis server at ``url`` (redis://, rediss:// or unix://).

    ``max_connections`` bounds the text pool (one of them is the relay's blocking reader); RQ's
    raw pool gets a third of it. Commands take well under a millisecond, so a handful of
    connections serve hundreds of sockets; greenlets wait for a free one instead of opening more.
    """
    return RedisClients(
        text=redis.Redis(connection_pool=_pool(url, max_connections, True, verify_tls)),
        raw=redis.Redis(connection_pool=_pool(url, max(2, max_connections // 3), False, verify_tls)),
    )


def connect_fake(server: Any) -> RedisClients:
    """Clients for an in-process ``fakeredis.FakeServer`` (the embedded default)."""
    import fakeredis

    return RedisClients(
        text=fakeredis.FakeRedis(server=server, decode_responses=True),
        raw=fakeredis.FakeRedis(server=server),
    )
