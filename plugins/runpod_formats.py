"""Parsers for what RunPod vLLM workers produce, and for RunPod's job error shapes.

A worker's output arrives as stream items (``/stream``: ``{"output": <one yield>, ...}``) or as a
finished job's ``output`` (``/status``: the list of all yields). The format is detected from the
yields themselves:

- classic (worker-vllm <= v2.23): ``{"choices": [{"tokens": [...]}], "usage": {"input", "output"}}``,
  streaming in growing batches, or one yield holding the whole text when not streaming;
- OpenAI proxy (worker-vllm >= v2.24): stream yields are raw SSE text cut at arbitrary byte
  boundaries; the non-stream output is a one-element list holding a ``chat.completion``;
- plain text yields from custom handlers are accepted as text.

Everything here is pure (no I/O) so it is tested exhaustively on its own.
"""
from __future__ import annotations

import json
from typing import Any

from chatapp.errors import ProviderError
from chatapp.models import Usage
from plugins.sse import ChatStreamDecoder, Delta, delta_from_object, error_text, estimate_tokens

CLASSIC, OPENAI_SSE, OPENAI_OBJECT, PLAIN_TEXT = "classic", "openai_sse", "openai", "text"
# OpenAI-proxy streams always open with a data line (or a comment).
_SSE_FIELDS = ("data:", ":")


def item_output(item: Any) -> Any:
    """The worker's yield inside one ``/stream`` item; other keys beside ``output`` are ignored."""
    if isinstance(item, dict):
        return item.get("output")
    return None


def _looks_like_sse(text: str) -> bool:
    """Whether a first string yield starts an SSE stream (possibly cut inside ``data:``)."""
    head = text.lstrip("\r\n")
    if not head:
        return True  # only line ends so far: cannot be plain text worth keeping apart
    return any(head.startswith(f) or f.startswith(head[: len(f)]) for f in _SSE_FIELDS)


class OutputDecoder:
    """Turns a worker's yields, in order, into text, usage and a finish reason.

    ``feed`` returns the text each yield adds. Usage is the worker's own (classic ``usage`` or the
    OpenAI ``usage`` object) when it reports one.
    """

    def __init__(self) -> None:
        self.format: str | None = None
        self._sse = ChatStreamDecoder()
        self._parts: list[str] = []
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.finish_reason: str | None = None
        self.yields = 0

    @property
    def text(self) -> str:
        """All text decoded so far."""
        return "".join(self._parts)

    @property
    def sse_done(self) -> bool:
        """The OpenAI-proxy stream sent ``data: [DONE]``."""
        return self._sse.done

    def feed(self, output: Any) -> str:
        """Decode one yield (a list is taken as several yields); return the text it adds."""
        if output is None:
            return ""
        if isinstance(output, list):
            return "".join(self.feed(part) for part in output)
        self.yields += 1
        if isinstance(output, (str, bytes)):
            return self._feed_text(output)
        if isinstance(output, dict):
            return self._feed_object(output)
        raise ProviderError(f"The RunPod worker yielded an unexpected value: {str(output)[:200]!r}")

    def flush(self) -> str:
        """End of output: decode an SSE event whose closing blank line never came."""
        if self.format != OPENAI_SSE:
            return ""
        return self._apply(self._sse.flush())

    def usage(self, fallback_input: int = 0) -> Usage:
        """Reported usage, else an estimate: ``fallback_input`` and the decoded text's tokens."""
        inp = self.input_tokens if self.input_tokens is not None else fallback_input
        out = self.output_tokens if self.output_tokens is not None else estimate_tokens(self.text)
        return Usage(inp, out)

    def _feed_text(self, piece: str | bytes) -> str:
        if self.format is None:
            text = piece.decode("utf-8", "replace") if isinstance(piece, bytes) else piece
            self.format = OPENAI_SSE if _looks_like_sse(text) else PLAIN_TEXT
        if self.format == PLAIN_TEXT:
            text = piece.decode("utf-8", "replace") if isinstance(piece, bytes) else piece
            self._parts.append(text)
            return text
        return self._apply(self._sse.feed(piece))

    def _feed_object(self, obj: dict[str, Any]) -> str:
        choices = obj.get("choices")
        if obj.get("error") and not choices:
            raise ProviderError(
                f"The RunPod worker reported an error: {error_text(obj['error'])}",
                details={"worker_error": error_text(obj["error"])},
            )
        first = choices[0] if isinstance(choices, list) and choices else None
        if isinstance(first, dict) and "tokens" in first:
            return self._feed_classic(obj, first)
        if isinstance(first, dict) or "usage" in obj or str(obj.get("object", "")).startswith("chat."):
            self.format = self.format or OPENAI_OBJECT
            return self._apply([delta_from_object(obj)])
        raise ProviderError(f"The RunPod worker yielded an unknown format: {json.dumps(obj)[:200]}")

    def _feed_classic(self, obj: dict[str, Any], choice: dict[str, Any]) -> str:
        self.format = self.format or CLASSIC
        tokens = choice.get("tokens") or []
        text = tokens if isinstance(tokens, str) else "".join(str(t) for t in tokens)
        usage = obj.get("usage")
        if isinstance(usage, dict):
            # "output" is cumulative over the yields; keep the largest seen.
            if usage.get("input") is not None:
                self.input_tokens = int(usage["input"])
            if usage.get("output") is not None:
                self.output_tokens = max(self.output_tokens or 0, int(usage["output"]))
        if choice.get("finish_reason"):
            self.finish_reason = "length" if choice["finish_reason"] == "length" else "stop"
        self._parts.append(text)
        return text

    def _apply(self, deltas: list[Delta]) -> str:
        added = []
        for delta in deltas:
            if delta.text:
                added.append(delta.text)
            if delta.finish_reason:
                self.finish_reason = delta.finish_reason
            if delta.usage is not None:
                self.input_tokens = delta.usage.input_tokens
                self.output_tokens = delta.usage.output_tokens
        text = "".join(added)
        if text:
            self._parts.append(text)
        return text


def decode_output(output: Any) -> OutputDecoder:
    """Decode a finished job's whole ``output`` (from ``/status``)."""
    decoder = OutputDecoder()
    decoder.feed(output)
    decoder.flush()
    return decoder


def has_output(output: Any) -> bool:
    """Whether a ``/status`` output holds anything (RunPod may report COMPLETED without it)."""
    return output not in (None, "", [], {})


def job_error_message(error: Any) -> tuple[str, dict[str, Any]]:
    """The handler's message from a FAILED job's ``error``, without the traceback, plus details.

    Two shapes exist: a JSON-encoded ``{"error_type", "error_message", "error_traceback", ...}``
    string (handler exceptions) and ``"handler: <msg> \\ntraceback: ..."`` (generator exceptions).
    """
    if error is None or error == "":
        return "the worker gave no error message", {}
    data: Any = error
    if isinstance(error, str):
        try:
            data = json.loads(error)
        except ValueError:
            data = error
    if isinstance(data, dict):
        message = str(data.get("error_message") or data.get("message") or data.get("error") or "")
        details = {k: data[k] for k in ("error_type", "worker_id", "hostname") if data.get(k)}
        if not message:
            message = json.dumps({k: v for k, v in data.items() if k != "error_traceback"})
        return _clip(message), details
    text = str(data)
    head, sep, _traceback = text.partition("traceback:")
    if sep:
        text = head
    text = text.strip()
    if text.startswith("handler:"):
        text = text[len("handler:"):].strip()
    return _clip(text or "the worker gave no error message"), {}


def _clip(text: str, limit: int = 500) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"
