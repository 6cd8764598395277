"""OpenAI-compatible provider tests against a scripted loopback server (werkzeug in a thread),
plus ``TestAgainstEmulator``: the RunPod emulator's ``/v2/<id>/openai/v1`` route."""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable, Iterator

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from chatapp.errors import (
    InvalidRequest,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from chatapp.models import ChatRequest, Chunk, GenerationContext, GenerationResult, Message, Usage
from plugins.http_retry import RetryPolicy
from plugins.openai_compat import OpenAIProvider, register_providers
from tests.test_runpod_formats import TEXT, openai_sse

KEY = "sk-test-secret-987"
logging.getLogger("werkzeug").setLevel(logging.WARNING)


def sse_response(body: str | Iterator[bytes], status: int = 200) -> Response:
    return Response(body, status=status, content_type="text/event-stream")


def slow_sse(text: str, pause: float, **kw: Any) -> Iterator[bytes]:
    """``openai_sse(text)``: the first content event, a pause, then the rest in small pieces."""
    raw = openai_sse(text, **kw).encode()
    first = raw.index(b"\n\n", raw.index(b'{"content": "')) + 2
    yield raw[:first]
    time.sleep(pause)
    for i in range(first, len(raw), 37):
        yield raw[i:i + 37]


class StubOpenAI:
    """A chat-completions server whose answers are scripted per request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[Callable[[Request], Response]] = []
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def app(self, environ, start_response):
        req = Request(environ)
        self.requests.append({"path": req.path, "json": req.get_json(silent=True),
                              "auth": req.headers.get("Authorization"), "at": time.monotonic()})
        handler = self.script.pop(0) if self.script else (lambda r: sse_response(openai_sse(TEXT)))
        return handler(req)(environ, start_response)


def error(status: int, message: str, headers: dict[str, str] | None = None):
    return lambda req: Response(json.dumps({"error": {"message": message}}), status=status,
                                content_type="application/json", headers=headers or {})


@pytest.fixture()
def stub():
    server = StubOpenAI()
    yield server
    server.stop()


def make_provider(base_url: str, key: str = KEY, **kw: Any) -> OpenAIProvider:
    kw.setdefault("retry", RetryPolicy(4, base_delay=0.01, max_delay=0.05, max_retry_after=1.0))
    return OpenAIProvider(base_url, key, ["small", "big"], **kw)


def make_request(**params: Any) -> ChatRequest:
    return ChatRequest("msg-1", "conv-1", "user-1", "openai", "",
                       [Message("system", "Be brief."), Message("user", "Hi there")], params)


def collect(provider: OpenAIProvider, request: ChatRequest | None = None,
            ctx: GenerationContext | None = None) -> tuple[str, list[Chunk]]:
    chunks = list(provider.stream(request or make_request(), ctx or GenerationContext("msg-1")))
    return "".join(c.text for c in chunks), chunks


def test_streams_text_usage_and_sends_the_right_body(stub):
    stub.script.append(lambda req: sse_response(openai_sse(TEXT, finish="length")))
    text, chunks = collect(make_provider(stub.base_url), make_request(temperature=0.2, max_tokens=9,
                                                                       emulator_fault="x"))
    assert text == TEXT
    final = chunks[-1]
    assert final.usage == Usage(7, 11) and final.finish_reason == "length"
    assert final.meta == {"model": "small", "api_calls": 1}
    sent = stub.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == f"Bearer {KEY}"
    assert sent["json"] == {
        "model": "small", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
        "temperature": 0.2, "max_tokens": 9,
    }


def test_text_arrives_as_it_is_generated(stub):
    stub.script.append(lambda req: sse_response(slow_sse(TEXT, pause=0.5, pieces=20)))
    started = time.monotonic()
    first_text_at = None
    for chunk in make_provider(stub.base_url).stream(make_request(), GenerationContext("m")):
        if chunk.text and first_text_at is None:
            first_text_at = time.monotonic() - started
    assert first_text_at is not None and first_text_at < 0.4


def test_no_key_no_header_and_usage_counted_when_absent(stub):
    stub.script.append(lambda req: sse_response(openai_sse("one two three", usage=False, crlf=True)))
    text, chunks = collect(make_provider(stub.base_url, key=""))
    assert stub.requests[0]["auth"] is None
    assert text == "one two three"
    assert chunks[-1].usage == Usage(5, 3) and chunks[-1].meta["usage_estimated"] is True


def test_server_ignoring_stream_true_sends_one_completion(stub):
    completion = {"object": "chat.completion", "usage": {"prompt_tokens": 3, "completion_tokens": 4},
                  "choices": [{"message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}]}
    stub.script.append(lambda req: Response(json.dumps(completion), content_type="application/json"))
    text, chunks = collect(make_provider(stub.base_url))
    assert text == TEXT and chunks[-1].usage == Usage(3, 4) and chunks[-1].finish_reason == "stop"


def test_429_and_503_retried_with_retry_after(stub):
    stub.script += [error(429, "slow down", {"Retry-After": "0.3"}), error(503, "loading")]
    text, chunks = collect(make_provider(stub.base_url))
    assert text == TEXT and len(stub.requests) == 3
    assert stub.requests[1]["at"] - stub.requests[0]["at"] >= 0.28
    assert chunks[-1].meta["api_calls"] == 3


def test_429_exhausted(stub):
    stub.script += [error(429, "slow down")] * 3
    with pytest.raises(ProviderRateLimited):
        collect(make_provider(stub.base_url, retry=RetryPolicy(3, 0.01, 0.02)))
    assert len(stub.requests) == 3


def test_400_is_not_retried_and_carries_the_server_message(stub):
    stub.script.append(error(400, "This model's maximum context length is 4096 tokens"))
    with pytest.raises(InvalidRequest, match="maximum context length"):
        collect(make_provider(stub.base_url))
    assert len(stub.requests) == 1


def test_401_names_the_variable_and_hides_the_key(stub):
    stub.script.append(error(401, f"Incorrect API key provided: {KEY}"))
    with pytest.raises(ProviderAuthError) as err:
        collect(make_provider(stub.base_url))
    assert "OPENAI_API_KEY" in err.value.message and KEY not in str(err.value)
    assert len(stub.requests) == 1


def test_404_points_at_base_url_and_models(stub):
    stub.script.append(error(404, "The model `small` does not exist."))
    with pytest.raises(ProviderError, match="OPENAI_BASE_URL"):
        collect(make_provider(stub.base_url))


def test_stream_options_rejected_is_retried_without_it(stub):
    stub.script.append(error(400, "Unrecognized request argument supplied: stream_options"))
    text, _ = collect(make_provider(stub.base_url))
    assert text == TEXT
    assert "stream_options" in stub.requests[0]["json"]
    assert "stream_options" not in stub.requests[1]["json"]


def test_connect_error_is_unavailable():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    provider = make_provider(f"http://127.0.0.1:{port}/v1", retry=RetryPolicy(2, 0.01, 0.02))
    with pytest.raises(ProviderUnavailable, match="OPENAI_BASE_URL"):
        collect(provider)
    assert provider.api_calls == 2


def test_stream_cut_short_is_unavailable(stub):
    raw = openai_sse(TEXT)
    cut = raw[: raw.index("finish_reason") - 40]
    stub.script.append(lambda req: sse_response(cut))
    with pytest.raises(ProviderUnavailable, match="ended the stream"):
        collect(make_provider(stub.base_url))


def test_error_event_mid_stream(stub):
    body = 'data: {"choices": [{"delta": {"content": "Hi"}}]}\n\ndata: {"error": {"message": "engine died"}}\n\n'
    stub.script.append(lambda req: sse_response(body))
    with pytest.raises(ProviderError, match="engine died"):
        collect(make_provider(stub.base_url))


def test_silent_server_times_out(stub):
    stub.script.append(lambda req: sse_response(slow_sse(TEXT, pause=2.0)))
    with pytest.raises(ProviderTimeout, match="silent"):
        collect(make_provider(stub.base_url, read_timeout=0.3))


def test_cancel_closes_the_response_promptly(stub):
    stub.script.append(lambda req: sse_response(slow_sse(TEXT, pause=5.0)))
    provider = make_provider(stub.base_url)
    ctx = GenerationContext("msg-1")
    chunks: list[Chunk] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            chunks.extend(provider.stream(make_request(), ctx))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    time.sleep(0.3)  # the server is now silent mid-reply
    started = time.monotonic()
    provider.cancel(ctx)
    thread.join(2)
    assert not thread.is_alive() and not errors
    assert time.monotonic() - started < 0.5
    assert not any(c.usage for c in chunks)


def test_price_uses_openai_prices(stub):
    provider = make_provider(stub.base_url,
                             prices={"small": {"input_per_million": 0.5, "output_per_million": 1.5}})
    result = GenerationResult("m", "done", "x", usage=Usage(1000, 2000), model="small")
    cost = provider.price(make_request(), result)
    assert cost.micros == 500 + 3000
    assert provider.price(make_request(), GenerationResult("m", "done", "x", model="big")) is None


def test_register_providers():
    assert register_providers({}) == []
    [provider] = register_providers({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_MODELS": "a, b",
                                     "OPENAI_PRICES": '{"a": {"input_per_million": 1, "output_per_million": 2}}'})
    assert provider.id == "openai" and provider.default_model == "a"
    assert [m.id for m in provider.models] == ["a", "b"]
    with pytest.raises(ValueError, match="OPENAI_PRICES"):
        register_providers({"OPENAI_BASE_URL": "http://x/v1", "OPENAI_PRICES": "{bad"})
    [bare] = register_providers({"OPENAI_BASE_URL": "http://x/v1"})
    with pytest.raises(ProviderError, match="OPENAI_MODELS"):
        list(bare.stream(make_request(), GenerationContext("m")))


class TestAgainstEmulator:
    """The provider against the RunPod emulator's OpenAI-compatible route."""

    @pytest.fixture()
    def emulator(self):
        mod = pytest.importorskip("chatapp.runpod_emulator")
        srv = mod.EmulatorServer(mod.EmulatorConfig(cold_start_s=0.05, idle_timeout_s=0.2, ttft_s=0.05,
                                                    tokens_per_s=200),
                                 host="127.0.0.1", port=0, api_key=KEY)
        srv.start()
        yield srv
        srv.stop()

    def test_emulator_openai_route(self, emulator):
        provider = OpenAIProvider(f"{emulator.base_url}/ep-test/openai/v1", KEY, ["any-model"])
        text, chunks = collect(provider, make_request(max_tokens=40))
        assert text.strip()
        assert chunks[-1].finish_reason in ("stop", "length")
        assert chunks[-1].usage.output_tokens > 0
