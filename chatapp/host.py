"""What the host lends plugins: its settings and its Redis, under the app's key prefix.

Hooks that run per request (``before_generation``, ``get_cached_reply``, ``price_generation``,
``after_generation``) receive it as ``host``, the way Datasette passes ``datasette``: a plugin
keeps no global state and works in any number of apps at once (tests build many).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import redis


@dataclass
class Host:
    config: Mapping[str, Any]
    #: a decode_responses=True client; plugins own keys under ``key("plugin-name", ...)``
    redis: redis.Redis
    prefix: str

    def key(self, *parts: str) -> str:
        """A Redis key in this app's namespace: ``key("cache", "abc")`` -> ``chatapp:cache:abc``."""
        return self.prefix + ":".join(parts)
