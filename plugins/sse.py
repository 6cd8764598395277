"""Server-sent events and the OpenAI chat-completion stream format.

Shared by ``plugins.openai_compat`` (SSE over HTTP) and ``plugins.runpod_formats`` (the vLLM
worker's OpenAI-proxy format, whose stream items are raw SSE text cut at arbitrary byte
boundaries). Both feed whatever pieces arrive; the parsers buffer across pieces.
"""
from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any

from chatapp.errors import ProviderError
from chatapp.models import Usage

# SSE lines end with CRLF, LF or CR (WHATWG spec). Not str.splitlines: it also splits on
# \u2028, \x1c... which may legally appear inside a JSON payload.
_LINE_END = re.compile(r"\r\n|\r|\n")
_WORDISH = re.compile(r"\w+|[^\w\s]")


class SSEParser:
    """Incremental SSE parser: ``feed`` pieces of the stream, get the complete events' data.

    Pieces may be ``str`` or ``bytes`` and may split anything: a line, a CRLF pair or a UTF-8
    sequence. Only ``data`` fields are collected (multi-line data joined with newlines); comments
    and the ``event``/``id``/``retry`` fields are ignored, as OpenAI-style streams never need them.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial: list[str] = []  # text of the current, unfinished line
        self._data: list[str] = []  # data lines of the current, undispatched event
        self._after_cr = False  # the last piece ended in CR: a leading LF belongs to it

    def feed(self, piece: str | bytes) -> list[str]:
        """Add a piece of the stream; return the data of every event it completed."""
        text = self._decoder.decode(piece) if isinstance(piece, (bytes, bytearray)) else piece
        if not text:
            return []
        if self._after_cr:
            self._after_cr = False
            if text[0] == "\n":
                text = text[1:]
                if not text:
                    return []
        if not _LINE_END.search(text):
            # No line end: just remember the piece (joining only at line ends keeps a huge line
            # fed in many small pieces linear rather than quadratic).
            self._partial.append(text)
            return []
        self._partial.append(text)
        buffered = "".join(self._partial)
        lines = _LINE_END.split(buffered)
        rest = lines.pop()
        self._partial = [rest] if rest else []
        self._after_cr = buffered.endswith("\r")
        events: list[str] = []
        for line in lines:
            self._line(line, events)
        return events

    def flush(self) -> list[str]:
        """End of stream: return the last event even if its closing blank line never came."""
        events: list[str] = []
        tail = "".join(self._partial) + self._decoder.decode(b"", final=True)
        self._partial = []
        if tail:
            self._line(tail, events)
        self._line("", events)
        return events

    def _line(self, line: str, events: list[str]) -> None:
        if not line:
            if self._data:
                events.append("\n".join(self._data))
                self._data = []
            return
        if line.startswith(":"):
            return  # comment / keep-alive
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)


@dataclass
class Delta:
    """What one chat-completion event (or a whole non-stream completion) contributes."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    done: bool = False  # the ``[DONE]`` sentinel


def map_finish_reason(reason: Any) -> str | None:
    """OpenAI's finish reasons onto ours: "length" stays, anything else final is "stop"."""
    if not reason:
        return None
    return "length" if reason == "length" else "stop"


def usage_from_openai(data: Any) -> Usage | None:
    """``{"prompt_tokens", "completion_tokens"}`` as a ``Usage``, or None when absent."""
    if not isinstance(data, dict):
        return None
    if "prompt_tokens" not in data and "completion_tokens" not in data:
        return None
    return Usage(int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0))


def error_text(error: Any) -> str:
    """The human part of an OpenAI-style ``error`` value (a string or ``{"message": ...}``)."""
    if isinstance(error, dict):
        return str(error.get("message") or error.get("error") or json.dumps(error))[:500]
    return str(error)[:500]


def delta_from_object(obj: Any) -> Delta:
    """Read a ``chat.completion.chunk`` or ``chat.completion`` object (first choice only)."""
    if not isinstance(obj, dict):
        raise ProviderError(f"The model server sent an unexpected stream event: {str(obj)[:200]!r}")
    if obj.get("error"):
        raise ProviderError(f"The model server reported an error mid-reply: {error_text(obj['error'])}")
    delta = Delta(usage=usage_from_openai(obj.get("usage")))
    choices = obj.get("choices") or []
    if choices and isinstance(choices[0], dict):
        choice = choices[0]
        part = choice.get("delta") or choice.get("message") or {}
        content = part.get("content") if isinstance(part, dict) else None
        delta.text = content if isinstance(content, str) else (choice.get("text") or "")
        delta.finish_reason = map_finish_reason(choice.get("finish_reason"))
    return delta


def parse_event(data: str) -> Delta:
    """One SSE event's data: ``[DONE]`` or a JSON chat-completion chunk."""
    if data.strip() == "[DONE]":
        return Delta(done=True)
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise ProviderError(
            f"The model server sent a malformed stream event ({exc}): {data[:200]!r}"
        ) from exc
    return delta_from_object(obj)


class ChatStreamDecoder:
    """SSE pieces in, ``Delta`` values out: an OpenAI chat-completion stream, incrementally."""

    def __init__(self) -> None:
        self._sse = SSEParser()
        self.done = False

    def feed(self, piece: str | bytes) -> list[Delta]:
        """Add a piece of the SSE text; return the deltas of every event it completed."""
        return self._decode(self._sse.feed(piece))

    def flush(self) -> list[Delta]:
        """End of stream: decode any last event that lacked its blank line."""
        return self._decode(self._sse.flush())

    def _decode(self, events: list[str]) -> list[Delta]:
        out = []
        for data in events:
            delta = parse_event(data)
            self.done = self.done or delta.done
            out.append(delta)
        return out


def estimate_tokens(text: str) -> int:
    """A rough token count (words and punctuation) for servers that report no usage."""
    return len(_WORDISH.findall(text))
