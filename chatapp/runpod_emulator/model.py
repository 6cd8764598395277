"""The demo text model and the vLLM worker's two output formats.

The demo model is NOT a language model: it echoes the prompt, names the persona and pads the reply
with deterministic filler words up to ``max_tokens``. It exists so the whole pipeline (queue,
streaming, cost) can run without a GPU. One "token" is one word-ish piece with its leading space.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from typing import Any

_PIECE = re.compile(r"\s*\S+")
_ECHO_WORDS = 24  # the echoed prompt is cut to this many words
_PERSONA_WORDS = 12
_FILLER = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut "
    "labore et dolore magna aliqua placeholder filler text demo tokens stream steadily onward"
).split()
OPENAI_CHAT_ROUTE = "/v1/chat/completions"


class InputError(ValueError):
    """The job input is not something the vLLM worker understands (the job then FAILS)."""


@dataclass(frozen=True)
class ParsedInput:
    """What the demo model needs from a vLLM-worker job input."""

    system: str | None
    user_text: str
    input_tokens: int
    max_tokens: int
    stream: bool
    openai: bool  # True: answer in OpenAI shapes whatever the endpoint's format
    include_usage: bool
    model: str | None


@dataclass(frozen=True)
class Reply:
    """The demo model's answer: its pieces (tokens) and why it stopped."""

    pieces: list[str]
    input_tokens: int
    finish_reason: str  # "stop", or "length" when max_tokens cut the echo short

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def _content_text(content: Any) -> str:
    """Message content as text; OpenAI content-part lists are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def parse_input(job_input: Any, default_max_tokens: int, max_tokens_cap: int) -> ParsedInput:
    """Read messages or prompt, sampling params and stream flags from a job input."""
    if not isinstance(job_input, dict):
        raise InputError("job input must be a JSON object")
    openai = "openai_route" in job_input
    source = job_input
    if openai:
        if job_input.get("openai_route") != OPENAI_CHAT_ROUTE:
            raise InputError(f"Invalid route: {job_input.get('openai_route')!r}")
        source = job_input.get("openai_input")
        if not isinstance(source, dict):
            raise InputError("openai_input must be a JSON object")
    messages = source.get("messages")
    prompt = source.get("prompt")
    if isinstance(messages, list) and messages:
        if not all(isinstance(m, dict) for m in messages):
            raise InputError("each message must be an object with role and content")
        system = next((_content_text(m.get("content")) for m in messages
                       if m.get("role") == "system"), None)
        users = [_content_text(m.get("content")) for m in messages if m.get("role") == "user"]
        user_text = users[-1] if users else _content_text(messages[-1].get("content"))
        all_text = " ".join(_content_text(m.get("content")) for m in messages)
    elif isinstance(prompt, str):
        system, user_text, all_text = None, prompt, prompt
    else:
        raise InputError("input needs 'messages' (a non-empty list) or 'prompt' (a string)")
    params = source if openai else (job_input.get("sampling_params") or {})
    max_tokens = params.get("max_tokens") or params.get("max_completion_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        max_tokens = default_max_tokens
    options = source.get("stream_options") or {}
    return ParsedInput(
        system=system,
        user_text=user_text,
        input_tokens=max(1, len(all_text.split())),
        max_tokens=min(max_tokens, max_tokens_cap),
        stream=bool(source.get("stream")),
        openai=openai,
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
        model=source.get("model") if isinstance(source.get("model"), str) else None,
    )


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:8], "big")


def demo_reply(parsed: ParsedInput) -> Reply:
    """The deterministic demo reply: the same input always gives the same pieces."""
    echo_words = parsed.user_text.split()
    echo = " ".join(echo_words[:_ECHO_WORDS]) + (" ..." if len(echo_words) > _ECHO_WORDS else "")
    text = f'[emulator] You said: "{echo}".'
    if parsed.system:
        first_line = (parsed.system.strip().splitlines() or [""])[0]
        persona = " ".join(first_line.split()[:_PERSONA_WORDS])
        text += f" (persona: {persona})"
    text += " This is a canned demo reply from the RunPod emulator, not a language model."
    pieces = _PIECE.findall(text)
    if len(pieces) >= parsed.max_tokens:
        cut = pieces[: parsed.max_tokens]
        return Reply(cut, parsed.input_tokens, "length" if len(pieces) > len(cut) else "stop")
    rng = random.Random(_seed(parsed.system or "", parsed.user_text))
    pieces += [" " + rng.choice(_FILLER) for _ in range(parsed.max_tokens - len(pieces))]
    if len(pieces) > 1 and not pieces[-1].endswith("."):
        pieces[-1] += "."
    return Reply(pieces, parsed.input_tokens, "stop")


def batch_sizes(total: int, first: int = 1, growth: int = 3, cap: int = 50) -> list[int]:
    """The vLLM worker's streaming batch sizes: 1, 3, 9, 27, then 50 per yield."""
    sizes, size = [], first
    while total > 0:
        sizes.append(min(size, total))
        total -= sizes[-1]
        size = min(size * growth, cap)
    return sizes


# A yield plan: (number of tokens generated when the item is yielded, the item).
Yields = list[tuple[int, Any]]


def classic_yields(reply: Reply, stream: bool) -> Yields:
    """Classic vLLM-worker output: ``{"choices":[{"tokens":[...]}], "usage":{...}}`` items."""
    n = len(reply.pieces)
    if not stream:
        item = {"choices": [{"tokens": [reply.text]}],
                "usage": {"input": reply.input_tokens, "output": n}}
        return [(n, item)]
    out: Yields = []
    done = 0
    for size in batch_sizes(n):
        done += size
        out.append((done, {"choices": [{"tokens": reply.pieces[done - size:done]}],
                           "usage": {"input": reply.input_tokens, "output": done}}))
    return out


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def chat_completion(reply: Reply, completion_id: str, created: int, model: str) -> dict:
    """A non-streamed OpenAI ``chat.completion`` object for the reply."""
    n = len(reply.pieces)
    return {
        "id": completion_id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text,
                                             "tool_calls": []},
                     "logprobs": None, "finish_reason": reply.finish_reason, "stop_reason": None}],
        "usage": {"prompt_tokens": reply.input_tokens, "total_tokens": reply.input_tokens + n,
                  "completion_tokens": n},
        "prompt_logprobs": None,
    }


def sse_events(reply: Reply, completion_id: str, created: int, model: str,
               include_usage: bool) -> list[tuple[int, str]]:
    """The SSE events of a streamed chat completion, each with the token count it follows."""
    head = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
            "model": model}

    def chunk(delta: dict, finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return f"data: {_dumps({**head, 'choices': [choice]})}\n\n"

    n = len(reply.pieces)
    events = [(1, chunk({"role": "assistant", "content": ""}))]
    events += [(i + 1, chunk({"content": p})) for i, p in enumerate(reply.pieces)]
    events.append((n, chunk({"content": ""}, reply.finish_reason)))
    if include_usage:
        usage = {"prompt_tokens": reply.input_tokens, "total_tokens": reply.input_tokens + n,
                 "completion_tokens": n}
        events.append((n, f"data: {_dumps({**head, 'choices': [], 'usage': usage})}\n\n"))
    events.append((n, "data: [DONE]\n\n"))
    return events


def openai_yields(reply: Reply, stream: bool, include_usage: bool, completion_id: str,
                  created: int, model: str, rng: random.Random) -> Yields:
    """OpenAI-format output: one ``chat.completion``, or SSE text split at arbitrary points.

    Events are batched like the worker does (1, 3, 9, 27, 50 events per yield); each batch's text
    is then cut at a random point and the tail carried into the next yield, so a client must
    buffer across items exactly as with the real worker.
    """
    if not stream:
        return [(len(reply.pieces), chat_completion(reply, completion_id, created, model))]
    events = sse_events(reply, completion_id, created, model, include_usage)
    out: Yields = []
    carry, pos = "", 0
    sizes = batch_sizes(len(events))
    for i, size in enumerate(sizes):
        batch = events[pos:pos + size]
        pos += size
        text = carry + "".join(e for _, e in batch)
        tokens = batch[-1][0]
        last = i == len(sizes) - 1
        cut = rng.randint(1, len(text) - 1) if len(text) > 1 else len(text)
        if last:
            out.append((tokens, text[:cut]))
            if cut < len(text):
                out.append((tokens, text[cut:]))
        else:
            out.append((tokens, text[:cut]))
            carry = text[cut:]
    return out


def completion_id_for(job_id: str) -> str:
    """A stable OpenAI-style completion id derived from the job id."""
    return "chatcmpl-" + hashlib.sha256(job_id.encode()).hexdigest()[:24]


def split_seed(seed: int, job_id: str) -> random.Random:
    """The seeded random source for one job's SSE split points."""
    return random.Random(_seed(str(seed), job_id))
