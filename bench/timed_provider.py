"""A benchmark-only provider plugin: each chunk's text is the time it was emitted, so a client can
measure the latency the pipeline adds per chunk. Load it with CHATAPP_PLUGINS=bench.timed_provider.

``max_tokens`` sets the number of chunks; ``CHATAPP_TIMED_INTERVAL_S`` the gap between them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from chatapp import Chunk, ModelInfo, Provider, Usage, hookimpl


@dataclass
class TimedProvider(Provider):
    interval_s: float = 0.02

    def stream(self, request, context) -> Iterator[Chunk]:
        n = int(request.params.get("max_tokens") or 50)
        for _ in range(n):
            if context.cancelled.wait(self.interval_s):
                return
            yield Chunk(text=f"{time.time():.6f};")
        yield Chunk(usage=Usage(1, n), finish_reason="stop")


@hookimpl
def register_providers(config: Mapping[str, Any]) -> list[Provider]:
    return [TimedProvider(id="timed", models=[ModelInfo("timed-1")], default_model="timed-1",
                          interval_s=float(config.get("TIMED_INTERVAL_S", 0.02)))]
