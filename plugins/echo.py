"""The ``echo`` provider: deterministic, instant, offline. For tests and for trying the pipeline.

It is not a language model: it repeats the last user message back in small pieces.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from chatapp.hookspecs import hookimpl
from chatapp.models import ChatRequest, Chunk, GenerationContext, ModelInfo, Provider, Usage
from chatapp.prompt import estimate_prompt_tokens


def echo_text(request: ChatRequest) -> str:
    persona = f" ({request.persona.name})" if request.persona and request.persona.name else ""
    return f"Echo{persona}: {request.prompt_text}"


def pieces(text: str) -> Iterator[str]:
    """Words with their leading spaces, so the pieces concatenate back to ``text``."""
    start = 0
    for i in range(1, len(text) + 1):
        if i == len(text) or (text[i] == " " and text[i - 1] != " "):
            yield text[start:i]
            start = i


@dataclass
class EchoProvider(Provider):
    #: seconds between pieces; models "slow" with e.g. 0.05
    delay_s: float = 0.0

    def stream(self, request: ChatRequest, context: GenerationContext) -> Iterator[Chunk]:
        yield Chunk(status="generating")
        max_tokens = int(request.params.get("max_tokens") or 10_000)
        delay = self.delay_s
        out = 0
        finish = "stop"
        for piece in pieces(echo_text(request)):
            if context.cancelled.is_set():
                return
            if out >= max_tokens:
                finish = "length"
                break
            if delay:
                context.cancelled.wait(delay)
                if context.cancelled.is_set():
                    return
            out += 1
            yield Chunk(text=piece)
        prompt_tokens = estimate_prompt_tokens(request.messages)
        yield Chunk(usage=Usage(prompt_tokens, out), finish_reason=finish, meta={"echo_at": time.time()})


@hookimpl
def register_providers(config: Mapping[str, Any]) -> list[Provider]:
    return [EchoProvider(id="echo", name="Echo (offline test provider)",
                         models=[ModelInfo("echo-1", "Repeats your message; not a language model")],
                         default_model="echo-1", delay_s=float(config.get("ECHO_DELAY_S", 0.0)),
                         description="Deterministic offline provider for tests and demos.")]
