"""The OpenAI-compatible provider (``id="openai"``): any ``/v1/chat/completions`` server.

Works with vLLM, llama.cpp's server, Ollama, OpenAI itself, or RunPod's
``https://api.runpod.ai/v2/<endpoint>/openai/v1`` route. Configuration (docs/providers.md):
``OPENAI_BASE_URL``, ``OPENAI_API_KEY`` (optional for local servers), ``OPENAI_MODELS``,
``OPENAI_PRICES``.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any, Iterator, Mapping

import requests
from urllib3.exceptions import ReadTimeoutError

from chatapp.config import split_list
from chatapp.errors import ProviderError, ProviderTimeout, ProviderUnavailable
from chatapp.hookspecs import hookimpl
from chatapp.models import (
    ChatRequest,
    Chunk,
    Cost,
    GenerationContext,
    GenerationResult,
    ModelInfo,
    Provider,
    Usage,
)
from plugins.http_retry import Interrupted, RetryPolicy, Target, ThreadSessions, body_detail, check, send
from plugins.sse import ChatStreamDecoder, delta_from_object, estimate_tokens

log = logging.getLogger(__name__)

#: request params passed through to the server when present
PASSTHROUGH_PARAMS = ("max_tokens", "temperature", "top_p", "stop", "seed",
                      "presence_penalty", "frequency_penalty")


class OpenAIProvider(Provider):
    """Streams chat completions from an OpenAI-compatible server over SSE."""

    def __init__(
        self,
        base_url: str,
        api_key: str = "",
        models: list[str] | None = None,
        prices: Mapping[str, Mapping[str, float]] | None = None,
        *,
        retry: RetryPolicy | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
    ) -> None:
        models = list(models or [])
        super().__init__(
            id="openai",
            name="OpenAI-compatible",
            models=[ModelInfo(id=m) for m in models],
            default_model=models[0] if models else "",
            description=f"OpenAI-compatible server at {base_url}",
        )
        self.base_url = base_url.rstrip("/")
        self.prices = {k: dict(v) for k, v in (prices or {}).items()}
        self.retry = retry or RetryPolicy()
        self.connect_timeout = connect_timeout
        # Longest silence tolerated between two bytes of a reply (prefill of a long prompt).
        self.read_timeout = read_timeout
        self.target = Target("The OpenAI-compatible server", "OPENAI_API_KEY", "OPENAI_BASE_URL",
                             secret=api_key)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._sessions = ThreadSessions(headers)
        self._lock = threading.Lock()
        self._live: dict[str, requests.Response] = {}
        self.api_calls = 0

    # -- the Provider contract ---------------------------------------------------------------

    def stream(self, request: ChatRequest, context: GenerationContext) -> Iterator[Chunk]:
        """POST ``/chat/completions`` with ``stream: true`` and yield the text as it arrives."""
        model = request.model or self.default_model
        if not model:
            raise ProviderError("No model was asked for and OPENAI_MODELS is empty; set "
                                "OPENAI_MODELS to the model names your server serves.")
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        body.update({k: request.params[k] for k in PASSTHROUGH_PARAMS
                     if request.params.get(k) is not None})
        try:
            response, calls = self._open(body, context)
        except Interrupted:
            return
        if response is None:
            return
        with self._lock:
            self._live[context.message_id] = response
        try:
            yield Chunk(status="generating")
            yield from self._read(response, request, context, model, calls)
        finally:
            with self._lock:
                self._live.pop(context.message_id, None)
            response.close()

    def cancel(self, context: GenerationContext) -> None:
        """Stop the reply by closing its streaming response (the server then stops generating)."""
        context.cancelled.set()
        with self._lock:
            response = self._live.get(context.message_id)
        if response is not None:
            _abort(response)

    def price(self, request: ChatRequest, result: GenerationResult) -> Cost | None:
        """Tokens times ``OPENAI_PRICES`` (USD per million tokens), or None without a price."""
        model = result.model or request.model or self.default_model
        price = self.prices.get(model)
        if not price:
            return None
        in_pm = float(price.get("input_per_million", 0))
        out_pm = float(price.get("output_per_million", 0))
        # USD per million tokens times tokens is exactly micro-dollars.
        micros = result.usage.input_tokens * in_pm + result.usage.output_tokens * out_pm
        return Cost(micros=round(micros), breakdown={
            "input_tokens": result.usage.input_tokens, "output_tokens": result.usage.output_tokens,
            "input_per_million_usd": in_pm, "output_per_million_usd": out_pm, "model": model,
        })

    # -- internals ---------------------------------------------------------------------------

    def _open(self, body: dict[str, Any], context: GenerationContext
              ) -> tuple[requests.Response | None, int]:
        """Send the request (with retries); returns the open streaming response and call count."""
        url = f"{self.base_url}/chat/completions"
        session = self._sessions.get()
        calls = 0
        for _ in range(2):  # a second round only to drop stream_options for servers that reject it
            timeout = (self.connect_timeout, self._read_timeout(context))

            def do(payload: dict[str, Any] = body, t: tuple[float, float] = timeout):
                return session.post(url, json=payload, stream=True, timeout=t)

            sent = send(do, target=self.target, what="/chat/completions", policy=self.retry,
                        idempotent=True, stop=context.cancelled, deadline=context.deadline,
                        on_attempt=self._count)
            calls += sent.attempts
            response = sent.response
            if context.cancelled.is_set():
                response.close()
                return None, calls
            if response.status_code < 400:
                return response, calls
            try:
                if (response.status_code in (400, 422) and "stream_options" in body
                        and "stream_options" in body_detail(response, self.target)):
                    log.info("server rejects stream_options; retrying without it")
                    body = {k: v for k, v in body.items() if k != "stream_options"}
                    continue
                check(response, target=self.target, what=f"/chat/completions (model "
                      f"{body['model']!r})", not_found=self._not_found(response, body["model"]))
            finally:
                response.close()
        raise ProviderError("The OpenAI-compatible server rejected the request twice.")

    def _read(self, response: requests.Response, request: ChatRequest,
              context: GenerationContext, model: str, calls: int) -> Iterator[Chunk]:
        if response.headers.get("Content-Type", "").startswith("application/json"):
            yield from self._read_whole(response, request, model, calls)
            return
        decoder = ChatStreamDecoder()
        parts: list[str] = []
        usage: Usage | None = None
        finish: str | None = None
        pieces = response.iter_content(chunk_size=None)
        try:
            while not decoder.done:
                piece = next(pieces, None)
                deltas = self._end(decoder) if piece is None else decoder.feed(piece)
                for delta in deltas:
                    if delta.text:
                        parts.append(delta.text)
                        yield Chunk(text=delta.text)
                    finish = delta.finish_reason or finish
                    usage = delta.usage or usage
                if piece is None or context.cancelled.is_set():
                    break
                if time.time() > context.deadline:
                    raise ProviderTimeout("The OpenAI-compatible server did not finish the reply "
                                          "before its deadline; lower max_tokens.")
        except Exception as exc:
            if context.cancelled.is_set():
                return  # cancel() broke the connection under us: that is the point
            if not isinstance(exc, requests.RequestException):
                raise
            if exc.args and isinstance(exc.args[0], ReadTimeoutError):
                raise ProviderTimeout(
                    f"The OpenAI-compatible server went silent for {self._read_timeout(context):g} s "
                    "mid-reply. Try again.") from exc
            raise ProviderUnavailable(
                "The connection to the OpenAI-compatible server broke mid-reply "
                f"({type(exc).__name__}); try again.") from exc
        if context.cancelled.is_set():
            return
        if not decoder.done and finish is None:
            raise ProviderUnavailable("The OpenAI-compatible server ended the stream before the "
                                      "reply was finished (no finish_reason, no [DONE]); try again.")
        yield self._final(request, model, calls, parts, usage, finish)

    def _read_whole(self, response: requests.Response, request: ChatRequest, model: str,
                    calls: int) -> Iterator[Chunk]:
        """A server that ignored ``stream: true`` and sent one ``chat.completion`` object."""
        try:
            delta = delta_from_object(response.json())
        except ValueError as exc:
            raise ProviderError("The OpenAI-compatible server sent a JSON body that is not a chat "
                                "completion; check OPENAI_BASE_URL.") from exc
        if delta.text:
            yield Chunk(text=delta.text)
        yield self._final(request, model, calls, [delta.text], delta.usage, delta.finish_reason)

    @staticmethod
    def _final(request: ChatRequest, model: str, calls: int, parts: list[str],
               usage: Usage | None, finish: str | None) -> Chunk:
        meta: dict[str, Any] = {"model": model, "api_calls": calls}
        if usage is None:  # the server ignored include_usage: count roughly
            usage = Usage(sum(estimate_tokens(m.content) for m in request.messages),
                          estimate_tokens("".join(parts)))
            meta["usage_estimated"] = True
        return Chunk(usage=usage, finish_reason=finish or "stop", meta=meta)

    @staticmethod
    def _end(decoder: ChatStreamDecoder) -> list:
        """End of the body: a last event cut off mid-JSON means the stream was cut short."""
        try:
            return decoder.flush()
        except ProviderError as exc:
            raise ProviderUnavailable("The OpenAI-compatible server ended the stream in the middle "
                                      "of an event; try again.") from exc

    def _read_timeout(self, context: GenerationContext) -> float:
        return max(1.0, min(self.read_timeout, context.seconds_left()))

    def _not_found(self, response: requests.Response, model: str) -> str:
        detail = body_detail(response, self.target)
        return (f"The OpenAI-compatible server answered 404 for /chat/completions with model "
                f"{model!r}{': ' + detail if detail else ''}. Check OPENAI_BASE_URL (it usually "
                "ends in /v1) and OPENAI_MODELS.")

    def _count(self) -> None:
        with self._lock:
            self.api_calls += 1


def _abort(response: requests.Response) -> None:
    """Close a streaming response from another thread, waking a read blocked on its socket."""
    # close() does not wake a recv() blocked in another thread; a socket shutdown does, and
    # leaves closing the response to the reading thread (no race on its buffers).
    try:
        response.raw.shutdown()  # urllib3 >= 2.3 keeps the socket for exactly this
        return
    except (AttributeError, ValueError, RuntimeError, OSError):
        pass
    conn = getattr(response.raw, "_connection", None)
    sock = getattr(conn, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
            return
        except OSError:
            pass
    try:
        response.close()
    except Exception:  # noqa: BLE001 - best effort from a foreign thread
        log.debug("closing a cancelled response failed", exc_info=True)


def _prices(config: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    raw = config.get("OPENAI_PRICES")
    if not raw:
        return {}
    try:
        data = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
    except ValueError as exc:
        raise ValueError(f"OPENAI_PRICES is not valid JSON ({exc}); expected "
                         '{"model": {"input_per_million": 0.5, "output_per_million": 1.5}}') from exc
    if not isinstance(data, Mapping) or not all(isinstance(v, Mapping) for v in data.values()):
        raise ValueError('OPENAI_PRICES must map model names to {"input_per_million", '
                         '"output_per_million"}')
    return {str(k): {kk: float(vv) for kk, vv in v.items()} for k, v in data.items()}


@hookimpl
def register_providers(config: Mapping[str, Any]) -> list[Provider]:
    """The OpenAI-compatible provider when ``OPENAI_BASE_URL`` is set, else []."""
    base_url = str(config.get("OPENAI_BASE_URL") or "").strip()
    if not base_url:
        return []
    models = split_list(config.get("OPENAI_MODELS"))
    if not models:
        log.warning("OPENAI_MODELS is empty: requests must name a model")
    return [OpenAIProvider(base_url, str(config.get("OPENAI_API_KEY") or ""), models,
                           _prices(config))]
