"""RunPod provider tests.

The first part runs against ``StubRunPod``, a scripted queue API served on loopback (werkzeug in a
thread), to pin down HTTP behaviour: retries, Retry-After, no duplicate /run, stall timeout,
long-poll detection, cancel, reattach. ``TestAgainstEmulator`` at the end runs the provider
against the project's RunPod emulator (``chatapp.runpod_emulator``); select those tests with
``-k Emulator`` or leave them out with ``-k "not Emulator"``.
"""
from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from chatapp.errors import (
    InvalidRequest,
    ProviderAuthError,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
)
from chatapp.models import (
    ChatRequest,
    Chunk,
    GenerationContext,
    GenerationResult,
    Message,
    Usage,
)
from plugins.http_retry import RetryPolicy, parse_retry_after
from plugins.runpod import EndpointConfig, RunPodProvider, load_endpoints, register_providers
from plugins.runpod_client import TERMINAL, RunPodClient
from plugins.runpod_job import PollPolicy
from tests.test_runpod_formats import TEXT, classic_yields, openai_sse

KEY = "rp-test-key-0123456789"
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log per stub request
UNSET = object()


# -- a scripted RunPod queue API ----------------------------------------------------------------

class FakeJob:
    """A job whose status and stream items unfold on a timeline from its creation."""

    def __init__(self, outputs=(), *, queue_s: float = 0.0, interval: float = 0.0,
                 end: str | None = "COMPLETED", output: Any = UNSET, error: Any = None,
                 execution_ms: int = 1500, delay_ms: int = 120) -> None:
        self.items = [{"output": o, "metrics": {"n": i}} for i, o in enumerate(outputs)]
        self.queue_s, self.interval, self.end = queue_s, interval, end
        self.output = list(outputs) if output is UNSET else output
        self.error, self.execution_ms, self.delay_ms = error, execution_ms, delay_ms
        self.created = time.monotonic()
        self.delivered = 0
        self.cancelled = False
        self.reported: str | None = None

    def state(self) -> tuple[str, int]:
        """(status, number of items produced so far)."""
        if self.cancelled:
            return "CANCELLED", self.delivered
        t = time.monotonic() - self.created
        if t < self.queue_s:
            return "IN_QUEUE", 0
        n = len(self.items) if not self.interval else min(len(self.items),
                                                          int((t - self.queue_s) / self.interval))
        if n < len(self.items) or self.end is None:
            return "IN_PROGRESS", n
        return self.end, n

    def status_body(self, job_id: str) -> dict[str, Any]:
        status, _ = self.state()
        body = {"id": job_id, "status": status, "delayTime": self.delay_ms,
                "executionTime": self.execution_ms, "workerId": "worker-1"}
        if status == "COMPLETED" and self.output is not None:
            body["output"] = self.output
        if status == "FAILED":
            body["error"] = self.error
        return body


@dataclass
class Call:
    kind: str
    method: str
    job_id: str | None
    args: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)


class StubRunPod:
    """A small stand-in for RunPod's queue API with scripted jobs and per-call faults.

    ``faults[kind]`` is a list consumed one per call of that kind (None: no fault). A fault is a
    dict: ``sleep`` (seconds before answering), ``status``/``headers``/``body`` (answer with that
    instead), ``consume`` (do the real work first, so /stream items are consumed and lost),
    ``drop`` (send a truncated body and close the connection).
    """

    def __init__(self, honor_wait: bool = True) -> None:
        self.honor_wait = honor_wait
        self.jobs: dict[str, FakeJob] = {}
        self.next_jobs: list[FakeJob] = []
        self.faults: dict[str, list[dict[str, Any] | None]] = {}
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/v2"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def of(self, kind: str) -> list[Call]:
        return [c for c in self.calls if c.kind == kind]

    def add_job(self, job: FakeJob, job_id: str = "") -> str:
        job_id = job_id or f"{uuid.uuid4()}-u1"
        self.jobs[job_id] = job
        return job_id

    def app(self, environ, start_response):
        req = Request(environ)
        parts = req.path.strip("/").split("/")
        kind = parts[2] if len(parts) > 2 else ""
        job_id = parts[3] if len(parts) > 3 else None
        body = req.get_json(silent=True)
        with self.lock:
            self.calls.append(Call(kind, req.method, job_id, dict(req.args), body))
            queue = self.faults.get(kind) or []
            fault = queue.pop(0) if queue else None
        fault = fault or {}
        if fault.get("sleep"):
            time.sleep(fault["sleep"])
        if req.headers.get("Authorization") != f"Bearer {KEY}":
            return self._json({"error": "Unauthorized"}, 401)(environ, start_response)
        if "status" in fault and not fault.get("consume"):
            return self._json(fault.get("body", {"error": "injected"}), fault["status"],
                              fault.get("headers"))(environ, start_response)
        payload, code = self.handle(kind, job_id, body, req.args)
        if fault.get("consume"):
            return self._json({"error": "injected"}, fault["status"])(environ, start_response)
        if fault.get("drop"):
            data = json.dumps(payload).encode()

            def half_then_hang_up():
                yield data[: len(data) // 2]
                environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)

            resp = Response(half_then_hang_up(), status=code, content_type="application/json",
                            headers={"Content-Length": str(len(data))})
            return resp(environ, start_response)
        return self._json(payload, code)(environ, start_response)

    @staticmethod
    def _json(payload: Any, code: int, headers: dict[str, str] | None = None) -> Response:
        return Response(json.dumps(payload), status=code, content_type="application/json",
                        headers=headers or {})

    def handle(self, kind: str, job_id: str | None, body: Any, args: Any) -> tuple[Any, int]:
        if kind == "run":
            job = self.next_jobs.pop(0) if self.next_jobs else FakeJob(classic_yields("Hi!"))
            job.created = time.monotonic()
            return {"id": self.add_job(job), "status": "IN_QUEUE"}, 200
        job = self.jobs.get(job_id or "")
        if job is None:
            return {"error": "job not found"}, 404
        if kind == "status":
            return job.status_body(job_id), 200
        if kind == "cancel":
            job.cancelled = True
            return {"id": job_id, "status": "CANCELLED"}, 200
        if kind == "stream":
            wait = int(args.get("wait") or 0) / 1000
            until = time.monotonic() + wait
            while True:
                status, n = job.state()
                ready = n > job.delivered or status != job.reported or status in TERMINAL
                if ready or not self.honor_wait or time.monotonic() >= until:
                    break
                time.sleep(0.005)
            items = job.items[job.delivered:n]
            job.delivered = n
            job.reported = status
            return {"status": status, "stream": items}, 200
        return {"error": "no route"}, 404


@pytest.fixture()
def stub():
    server = StubRunPod()
    yield server
    server.stop()


def make_provider(base_url: str, *, stall: float = 5.0, wait_ms: int = 200, attempts: int = 4,
                  read_timeout: float = 5.0, execution_timeout_s: float | None = None) -> RunPodProvider:
    client = RunPodClient(KEY, base_url, read_timeout=read_timeout, stream_read_margin=1.0,
                          retry=RetryPolicy(attempts, base_delay=0.01, max_delay=0.05,
                                            max_retry_after=1.0))
    endpoint = EndpointConfig("m1", "ep1", gpu="L4", price_per_second=0.00019)
    return RunPodProvider([endpoint], client, stall_timeout_s=stall,
                          execution_timeout_s=execution_timeout_s, poll=PollPolicy(wait_ms=wait_ms))


def make_request(**params: Any) -> ChatRequest:
    return ChatRequest("msg-1", "conv-1", "user-1", "runpod", "m1",
                       [Message("system", "Be brief."), Message("user", "Hi there")],
                       params={"max_tokens": 512, **params})


def make_context(**kw: Any) -> tuple[GenerationContext, list[dict[str, Any]]]:
    saved: list[dict[str, Any]] = []
    ctx = GenerationContext("msg-1", save_state=saved.append, **kw)
    return ctx, saved


def collect(provider: RunPodProvider, request: ChatRequest | None = None,
            ctx: GenerationContext | None = None) -> tuple[str, list[Chunk]]:
    chunks = list(provider.stream(request or make_request(), ctx or make_context()[0]))
    return "".join(c.text for c in chunks), chunks


def merged_meta(chunks: list[Chunk]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for chunk in chunks:
        meta.update(chunk.meta)
    return meta


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v2"


# -- the happy paths ---------------------------------------------------------------------------

def test_classic_stream_statuses_usage_meta_and_save_state(stub):
    outputs = classic_yields(TEXT * 4)
    stub.next_jobs.append(FakeJob(outputs, queue_s=0.15, interval=0.02))
    provider = make_provider(stub.base_url)
    ctx, saved = make_context()
    text, chunks = collect(provider, ctx=ctx)
    assert text == TEXT * 4
    statuses = [c.status for c in chunks if c.status]
    assert statuses == ["provider_queued", "generating"]
    final = chunks[-1]
    assert final.usage == Usage(5, outputs[-1]["usage"]["output"])
    assert final.finish_reason == "stop"
    job_id = saved[0]["runpod_job_id"]
    assert job_id in stub.jobs
    assert saved == [{"runpod_job_id": job_id, "endpoint_id": "ep1"}]
    meta = final.meta
    assert meta["runpod_job_id"] == job_id and meta["endpoint_id"] == "ep1"
    assert (meta["execution_ms"], meta["delay_ms"], meta["worker_id"]) == (1500, 120, "worker-1")
    assert meta["api_calls"] == len(stub.calls) == provider.api_calls
    assert meta["output_format"] == "classic" and meta["stream_wait"] is True
    body = stub.of("run")[0].body
    assert body["input"] == {"messages": [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Hi there"}],
                             "sampling_params": {"max_tokens": 512}, "stream": True}
    timeout_ms = body["policy"]["executionTimeout"]
    assert 500_000 < timeout_ms < 600_000  # just below the context's 600 s deadline
    assert len(stub.of("status")) == 1  # read once, for the billing facts


def test_openai_proxy_format_items_split_anywhere(stub):
    sse = openai_sse(TEXT * 3, pieces=12, finish="length")
    cuts = [0, 1, 5, 17, 60, 61, 200, 333, len(sse) - 3, len(sse)]
    pieces = [sse[a:b] for a, b in zip(cuts, cuts[1:])]
    stub.next_jobs.append(FakeJob(pieces, interval=0.01))
    text, chunks = collect(make_provider(stub.base_url))
    assert text == TEXT * 3
    assert chunks[-1].usage == Usage(7, 11) and chunks[-1].finish_reason == "length"
    assert chunks[-1].meta["output_format"] == "openai_sse"


def test_classic_length_inferred_from_max_tokens(stub):
    outputs = classic_yields("abcdefgh")  # 4 tokens
    stub.next_jobs.append(FakeJob(outputs))
    _, chunks = collect(make_provider(stub.base_url), make_request(max_tokens=4))
    assert chunks[-1].finish_reason == "length"


def test_sampling_params_and_emulator_fault_passthrough(stub):
    provider = make_provider(stub.base_url, execution_timeout_s=42)
    collect(provider, make_request(temperature=0.5, top_p=0.9, emulator_fault="stall", seed=3))
    body = stub.of("run")[0].body
    assert body["input"]["sampling_params"] == {"max_tokens": 512, "temperature": 0.5, "top_p": 0.9}
    assert body["input"]["emulator_fault"] == "stall"
    assert body["policy"] == {"executionTimeout": 42_000}


def test_price_from_meta(stub):
    provider = make_provider(stub.base_url)
    _, chunks = collect(provider)
    result = GenerationResult("msg-1", "done", "Hi!", meta=merged_meta(chunks))
    cost = provider.price(make_request(), result)
    assert cost.micros == math.ceil(1500 / 1000) * 190 == 380
    assert cost.breakdown["billed_seconds"] == 2 and cost.breakdown["execution_ms"] == 1500
    assert cost.breakdown["price_per_second_usd"] == 0.00019 and cost.breakdown["delay_ms"] == 120
    assert provider.price(make_request(), GenerationResult("m", "failed", "")) is None


# -- retries and error translation -------------------------------------------------------------

def test_backoff_is_bounded_full_jitter_and_honours_retry_after():
    policy = RetryPolicy(max_attempts=9, base_delay=0.1, max_delay=0.8, max_retry_after=2.0)
    for retry in range(1, 9):
        delays = [policy.delay(retry) for _ in range(200)]
        ceiling = min(0.8, 0.1 * 2 ** (retry - 1))
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # jitter spans the range
    assert 1.5 <= policy.delay(1, retry_after=1.5) <= 1.5 + 1e-9
    assert policy.delay(1, retry_after=99) == 2.0  # capped
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("nonsense") is None
    assert 50 < parse_retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT",
                                                time.gmtime(time.time() + 60))) <= 60


def test_run_429_retried_after_retry_after(stub):
    stub.faults["run"] = [{"status": 429, "headers": {"Retry-After": "0.3"}}] * 2
    text, _ = collect(make_provider(stub.base_url))
    runs = stub.of("run")
    assert text == "Hi!" and len(runs) == 3 and len(stub.jobs) == 1
    assert runs[1].at - runs[0].at >= 0.28 and runs[2].at - runs[1].at >= 0.28


def test_429_exhausted_is_rate_limited(stub):
    stub.faults["status"] = [{"status": 429}] * 10
    ctx, _ = make_context(resume_state={"runpod_job_id": "x", "endpoint_id": "ep1"}, attempt=2)
    with pytest.raises(ProviderError) as err:
        collect(make_provider(stub.base_url, attempts=3), ctx=ctx)
    assert err.value.code == "provider_rate_limited" and err.value.retryable
    assert len(stub.of("status")) == 3


def test_401_names_the_key_variable_and_hides_the_key(stub):
    client = RunPodClient("wrong-key-abc", stub.base_url, retry=RetryPolicy(4, 0.01, 0.05))
    provider = RunPodProvider([EndpointConfig("m1", "ep1")], client)
    with pytest.raises(ProviderAuthError) as err:
        collect(provider)
    assert "RUNPOD_API_KEY" in err.value.message and "wrong-key-abc" not in str(err.value)
    assert len(stub.calls) == 1


def test_400_and_404_on_run_are_not_retried(stub):
    stub.faults["run"] = [{"status": 400, "body": {"error": "input too large"}}]
    with pytest.raises(InvalidRequest, match="input too large"):
        collect(make_provider(stub.base_url))
    stub.faults["run"] = [{"status": 404, "body": {"error": "endpoint not found"}}]
    with pytest.raises(ProviderError, match="RUNPOD_ENDPOINT_ID"):
        collect(make_provider(stub.base_url))
    assert len(stub.of("run")) == 2


def test_run_read_timeout_is_not_retried(stub):
    # The request reached RunPod (the stub creates the job), but the answer came too late.
    stub.faults["run"] = [{"sleep": 0.6}]
    with pytest.raises(ProviderUnavailable, match="not repeated") as err:
        collect(make_provider(stub.base_url, read_timeout=0.3))
    assert not err.value.retryable
    time.sleep(0.4)
    assert len(stub.of("run")) == 1 and len(stub.jobs) == 1


def test_run_500_is_not_retried(stub):
    stub.faults["run"] = [{"status": 500}]
    with pytest.raises(ProviderUnavailable, match="not repeated") as err:
        collect(make_provider(stub.base_url))
    assert not err.value.retryable  # nor by the host: the job may exist
    assert len(stub.of("run")) == 1


def test_run_connect_errors_are_retried_then_fail_clearly():
    provider = make_provider(closed_port_url(), attempts=3)
    with pytest.raises(ProviderUnavailable, match="RUNPOD_BASE_URL"):
        collect(provider)
    assert provider.api_calls == 3


@pytest.mark.parametrize("fault", [{"status": 503, "consume": True}, {"drop": True}])
def test_stream_failure_after_consuming_items_recovers_full_text(stub, fault):
    outputs = classic_yields(TEXT * 3)
    stub.next_jobs.append(FakeJob(outputs, interval=0.03))
    stub.faults["stream"] = [None, None, fault]
    text, chunks = collect(make_provider(stub.base_url))
    assert text == TEXT * 3  # nothing lost, nothing doubled
    assert chunks[-1].usage.output_tokens == outputs[-1]["usage"]["output"]


def test_stream_5xx_before_consuming_is_retried(stub):
    stub.faults["stream"] = [{"status": 502}, {"status": 500, "headers": {"Retry-After": "0"}}]
    text, _ = collect(make_provider(stub.base_url))
    assert text == "Hi!"


# -- job outcomes ------------------------------------------------------------------------------

@pytest.mark.parametrize("error, expected", [
    (json.dumps({"error_type": "ValueError", "error_message": "prompt too long",
                 "error_traceback": "Traceback (most recent call last): ..."}), "prompt too long"),
    ("handler: CUDA out of memory \ntraceback: Traceback (most recent call last): ...",
     "CUDA out of memory"),
])
def test_failed_job_carries_handler_message(stub, error, expected):
    stub.next_jobs.append(FakeJob(classic_yields("partial"), end="FAILED", error=error))
    chunks: list[Chunk] = []
    with pytest.raises(ProviderError) as err:
        for chunk in make_provider(stub.base_url).stream(make_request(), make_context()[0]):
            chunks.append(chunk)
    assert expected in err.value.message and "Traceback" not in err.value.message
    assert err.value.code == "provider_error"
    assert merged_meta(chunks)["execution_ms"] == 1500  # still billable


def test_timed_out_job_is_provider_timeout(stub):
    stub.next_jobs.append(FakeJob([], end="TIMED_OUT"))
    with pytest.raises(ProviderTimeout, match="RUNPOD_EXECUTION_TIMEOUT_S"):
        collect(make_provider(stub.base_url))


def test_cancelled_elsewhere_is_an_error(stub):
    stub.next_jobs.append(FakeJob([], end="CANCELLED"))
    with pytest.raises(ProviderError, match="without us asking"):
        collect(make_provider(stub.base_url))


def test_expired_job_on_stream_is_clear(stub):
    stub.faults["stream"] = [{"status": 404, "body": {"error": "job not found"}}]
    with pytest.raises(ProviderError, match="no longer knows"):
        collect(make_provider(stub.base_url))


def test_unparseable_output_fails_and_stops_the_job(stub):
    stub.next_jobs.append(FakeJob([{"weird": True}, {"weird": True}], interval=0.2))
    with pytest.raises(ProviderError, match="unknown format"):
        collect(make_provider(stub.base_url))
    assert len(stub.of("cancel")) == 1


def test_completed_without_stream_items_uses_status_output(stub):
    job = FakeJob([], output=[{"choices": [{"tokens": [TEXT]}], "usage": {"input": 2, "output": 9}}])
    stub.next_jobs.append(job)
    text, chunks = collect(make_provider(stub.base_url))
    assert text == TEXT and chunks[-1].usage == Usage(2, 9)


def test_terminal_status_with_items_ends_the_stream_without_another_read(stub):
    stub.next_jobs.append(FakeJob(classic_yields(TEXT * 3)))  # all items already there, COMPLETED
    text, chunks = collect(make_provider(stub.base_url))
    assert text == TEXT * 3 and chunks[-1].finish_reason == "stop"
    assert len(stub.of("stream")) == 1 and len(stub.of("status")) == 1
    assert chunks[-1].meta["api_calls"] == 3  # /run, one /stream, the billing /status


def test_terminal_read_missing_items_is_completed_from_status_output(stub, caplog):
    outputs = classic_yields(TEXT * 3)
    stub.next_jobs.append(FakeJob(outputs))
    # a final read that holds only the first items (as if the server split them over calls)
    stub.faults["stream"] = [{"status": 200, "body": {"status": "COMPLETED",
                                                      "stream": [{"output": o} for o in outputs[:2]]}}]
    with caplog.at_level("INFO", logger="plugins.runpod_job"):
        text, chunks = collect(make_provider(stub.base_url))
    assert text == TEXT * 3 and len(stub.of("stream")) == 1
    assert "the final output had text the stream had not given yet" in caplog.text


def test_completed_without_any_output_fails_clearly(stub):
    stub.next_jobs.append(FakeJob([], output=None))
    with pytest.raises(ProviderError, match="no output"):
        collect(make_provider(stub.base_url))


# -- polling -----------------------------------------------------------------------------------

def test_long_poll_is_used_when_honoured(stub):
    stub.next_jobs.append(FakeJob(classic_yields("abcdef"), queue_s=0.9, interval=0.1))
    _, chunks = collect(make_provider(stub.base_url, wait_ms=300))
    streams = stub.of("stream")
    assert all(c.args.get("wait") == "300" for c in streams)
    # ~0.9 s queued at 300 ms per held call, then 3 items and the terminal flip.
    assert len(streams) <= 9, len(streams)
    assert chunks[-1].meta["stream_wait"] is True


def test_ignored_wait_falls_back_to_adaptive_polling(stub):
    stub.honor_wait = False
    stub.next_jobs.append(FakeJob(classic_yields("abcd"), queue_s=1.5, interval=0.05))
    provider = make_provider(stub.base_url, wait_ms=300)
    _, chunks = collect(provider)
    streams = stub.of("stream")
    assert [bool(c.args.get("wait")) for c in streams[:2]] == [True, True]
    assert not any(c.args.get("wait") for c in streams[2:])
    gaps = [b.at - a.at for a, b in zip(streams, streams[1:])]
    assert max(gaps) > 0.3  # the idle delay grew towards 1 s
    # 1.5 s idle at 50 ms growing x1.6 is ~8 calls; fixed 50 ms polling would be ~30.
    assert len(streams) <= 14, len(streams)
    assert chunks[-1].meta["stream_wait"] is False
    # The next job on this endpoint polls adaptively from the start.
    stub.next_jobs.append(FakeJob(classic_yields("x")))
    before = len(stub.of("stream"))
    collect(provider)
    assert not any(c.args.get("wait") for c in stub.of("stream")[before:])


def test_stall_timeout_cancels_upstream(stub):
    stub.next_jobs.append(FakeJob(classic_yields("ab"), end=None))
    started = time.monotonic()
    with pytest.raises(ProviderTimeout, match="RUNPOD_STALL_TIMEOUT_S"):
        collect(make_provider(stub.base_url, stall=0.4))
    assert time.monotonic() - started < 2.0
    assert len(stub.of("cancel")) == 1


def test_deadline_cancels_upstream(stub):
    stub.next_jobs.append(FakeJob(classic_yields("ab" * 50, batches=(1,)), interval=0.05))
    ctx, _ = make_context(deadline=time.time() + 0.4)
    with pytest.raises(ProviderTimeout, match="deadline"):
        collect(make_provider(stub.base_url, execution_timeout_s=10), ctx=ctx)
    assert len(stub.of("cancel")) == 1


def test_no_time_left_refuses_to_start(stub):
    ctx, _ = make_context(deadline=time.time() + 2)
    with pytest.raises(ProviderTimeout, match="too little"):
        collect(make_provider(stub.base_url), ctx=ctx)
    assert not stub.of("run")


# -- cancel ------------------------------------------------------------------------------------

def run_in_thread(provider: RunPodProvider, ctx: GenerationContext,
                  on_chunk: Callable[[Chunk], None] = lambda c: None) -> tuple[threading.Thread, dict]:
    out: dict[str, Any] = {"chunks": [], "error": None}

    def body() -> None:
        try:
            for chunk in provider.stream(make_request(), ctx):
                out["chunks"].append(chunk)
                on_chunk(chunk)
                if ctx.cancelled.is_set():
                    break  # what the host does
        except Exception as exc:  # noqa: BLE001
            out["error"] = exc
        out["ended"] = time.monotonic()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, out


def test_cancel_posts_once_and_stream_stops_promptly(stub):
    stub.next_jobs.append(FakeJob(classic_yields("ab" * 400, batches=(1,)), interval=0.02))
    provider = make_provider(stub.base_url, wait_ms=800)
    ctx, _ = make_context()
    got_text = threading.Event()
    thread, out = run_in_thread(provider, ctx, lambda c: c.text and got_text.set())
    assert got_text.wait(5)
    cancelled_at = time.monotonic()
    ctx.cancelled.set()  # the host sets the flag, then calls cancel (here twice, from two threads)
    others = [threading.Thread(target=provider.cancel, args=(ctx,)) for _ in range(2)]
    for t in others:
        t.start()
    provider.cancel(ctx)
    thread.join(3)
    for t in others:
        t.join(3)
    assert not thread.is_alive() and out["error"] is None
    assert out["ended"] - cancelled_at < 1.0
    assert len(stub.of("cancel")) == 1
    assert stub.jobs[stub.of("cancel")[0].job_id].cancelled


def test_cancel_while_run_in_flight_cancels_the_new_job(stub):
    stub.faults["run"] = [{"sleep": 0.3}]
    provider = make_provider(stub.base_url)
    ctx, _ = make_context()
    thread, out = run_in_thread(provider, ctx)
    time.sleep(0.1)
    provider.cancel(ctx)
    thread.join(3)
    assert not thread.is_alive() and out["error"] is None
    assert len(stub.of("cancel")) == 1 and not stub.of("stream")


def test_cancel_during_retry_backoff_returns_promptly(stub):
    stub.faults["run"] = [{"status": 429, "headers": {"Retry-After": "5"}}]
    provider = make_provider(stub.base_url)
    provider.client.retry = RetryPolicy(4, 0.01, 0.05, max_retry_after=10)
    ctx, _ = make_context()
    thread, out = run_in_thread(provider, ctx)
    time.sleep(0.2)
    provider.cancel(ctx)
    thread.join(2)
    assert not thread.is_alive() and out["error"] is None
    assert len(stub.of("run")) == 1 and not stub.of("cancel")


# -- reattach ----------------------------------------------------------------------------------

def resumed(job_id: str) -> GenerationContext:
    return make_context(resume_state={"runpod_job_id": job_id, "endpoint_id": "ep1"}, attempt=2)[0]


def test_reattach_to_running_job_yields_full_text_without_new_run(stub):
    outputs = classic_yields(TEXT * 2)
    job = FakeJob(outputs, interval=0.03)
    job_id = stub.add_job(job)
    time.sleep(0.1)
    job.delivered = 2  # an earlier attempt consumed the first items
    text, chunks = collect(make_provider(stub.base_url), ctx=resumed(job_id))
    assert text == TEXT * 2
    assert not stub.of("run")
    assert chunks[-1].meta["reattached"] is True and chunks[-1].meta["runpod_job_id"] == job_id


def test_reattach_to_queued_job_streams_normally(stub):
    job_id = stub.add_job(FakeJob(classic_yields(TEXT), queue_s=0.2, interval=0.02))
    text, chunks = collect(make_provider(stub.base_url), ctx=resumed(job_id))
    assert text == TEXT and not stub.of("run")
    assert sum(1 for c in chunks if c.text) > 1  # streamed, not one final blob


def test_reattach_to_completed_job_reads_status_only(stub):
    job_id = stub.add_job(FakeJob(classic_yields(TEXT)))
    text, _ = collect(make_provider(stub.base_url), ctx=resumed(job_id))
    assert text == TEXT
    assert [c.kind for c in stub.calls] == ["status"]


@pytest.mark.parametrize("job", [None, FakeJob([], end="FAILED", error="boom"),
                                 FakeJob([], output=None)])
def test_reattach_impossible_starts_a_new_job(stub, job):
    job_id = stub.add_job(job) if job else "expired-job"
    text, chunks = collect(make_provider(stub.base_url), ctx=resumed(job_id))
    assert text == "Hi!" and len(stub.of("run")) == 1
    assert chunks[-1].meta["runpod_job_id"] != job_id


# -- configuration -----------------------------------------------------------------------------

def test_register_providers_needs_key_and_endpoint():
    assert register_providers({}) == []
    assert register_providers({"RUNPOD_API_KEY": "k"}) == []
    assert register_providers({"RUNPOD_ENDPOINT_ID": "e"}) == []
    [provider] = register_providers({"RUNPOD_API_KEY": "k", "RUNPOD_ENDPOINT_ID": "e",
                                     "RUNPOD_GPU": "RTX 4090", "RUNPOD_STALL_TIMEOUT_S": "30",
                                     "RUNPOD_EXECUTION_TIMEOUT_S": "120"})
    assert provider.id == "runpod" and provider.default_model == "e"
    assert provider.endpoints[0].price_per_second == 0.00031
    assert provider.stall_timeout_s == 30 and provider.execution_timeout_s == 120
    assert provider.client.base_url == "https://api.runpod.ai/v2"


def test_endpoints_json_prices_and_model_lookup():
    endpoints = load_endpoints({
        "RUNPOD_ENDPOINT_ID": "main", "RUNPOD_PRICE_PER_SECOND": "0.0002", "RUNPOD_GPU": "L4",
        "RUNPOD_ENDPOINTS": json.dumps({
            "big": {"endpoint_id": "e-big", "gpu": "H100", "description": "70B"},
            "cheap": {"endpoint_id": "e-cheap", "price_per_second": 0.0001},
            "plain": {"endpoint_id": "e-plain"},
        })})
    prices = {e.model: e.price_per_second for e in endpoints}
    assert prices == {"main": 0.0002, "big": 0.00116, "cheap": 0.0001, "plain": 0.0002}
    provider = RunPodProvider(endpoints, RunPodClient("k"))
    assert [m.id for m in provider.models] == ["main", "big", "cheap", "plain"]
    assert provider.endpoint_for("").endpoint_id == "main"
    assert provider.endpoint_for("big").endpoint_id == "e-big"
    assert provider.endpoint_for("e-cheap").model == "cheap"
    with pytest.raises(InvalidRequest, match="RUNPOD_ENDPOINTS"):
        provider.endpoint_for("nope")


@pytest.mark.parametrize("config, match", [
    ({"RUNPOD_ENDPOINTS": "{nope"}, "not valid JSON"),
    ({"RUNPOD_ENDPOINTS": '{"m": {"gpu": "L4"}}'}, "endpoint_id"),
    ({"RUNPOD_ENDPOINT_ID": "e", "RUNPOD_PRICE_PER_SECOND": "cheap"}, "must be a number"),
])
def test_bad_config_is_reported_by_name(config, match):
    with pytest.raises(ValueError, match=match):
        load_endpoints(config)


# -- against the project's RunPod emulator -----------------------------------------------------

class TestAgainstEmulator:
    """The provider against ``chatapp.runpod_emulator`` (the stand-in for the real service).

    Per-request faults travel as the ``emulator_fault`` request param, which the provider passes
    into the job input only when set.
    """

    @pytest.fixture()
    def make_emulator(self):
        mod = pytest.importorskip("chatapp.runpod_emulator")
        servers = []

        def start(**overrides: Any):
            settings = {"cold_start_s": 0.05, "idle_timeout_s": 0.2, "ttft_s": 0.05,
                        "tokens_per_s": 200, "min_execution_timeout_ms": 100, **overrides}
            srv = mod.EmulatorServer(mod.EmulatorConfig(**settings), host="127.0.0.1", port=0,
                                     api_key=KEY)
            srv.start()
            servers.append(srv)
            return srv

        yield start
        for srv in servers:
            srv.stop()

    @staticmethod
    def final_text(srv, job_id: str) -> str:
        """The job's whole reply as /status reports it (the reference for streamed text)."""
        import requests

        from plugins.runpod_formats import decode_output

        body = requests.get(f"{srv.base_url}/ep1/status/{job_id}",
                            headers={"Authorization": f"Bearer {KEY}"}, timeout=5).json()
        return decode_output(body["output"]).text

    @pytest.mark.parametrize("fmt", ["classic", "openai"])
    @pytest.mark.parametrize("honor_wait", [True, False])
    def test_emulator_streams_reply(self, make_emulator, fmt, honor_wait):
        # A cold start long enough for the provider to see whether ``wait`` is honoured.
        srv = make_emulator(output_format=fmt, honor_stream_wait=honor_wait, cold_start_s=0.4)
        provider = make_provider(srv.base_url)
        ctx, saved = make_context()
        text, chunks = collect(provider, make_request(max_tokens=60), ctx)
        final = chunks[-1]
        assert text.strip() and text == self.final_text(srv, saved[0]["runpod_job_id"])
        assert [c.status for c in chunks if c.status][:1] == ["provider_queued"]
        assert final.finish_reason in ("stop", "length")
        assert final.usage.output_tokens > 0
        assert final.meta["output_format"] == ("classic" if fmt == "classic" else "openai_sse")
        assert final.meta["execution_ms"] is not None and final.meta["stream_wait"] is honor_wait
        assert final.meta["api_calls"] <= 40, final.meta["api_calls"]
        cost = provider.price(make_request(), GenerationResult("m", "done", text, meta=final.meta))
        assert cost is not None and cost.micros >= 190

    @pytest.mark.parametrize("fault", ["server_error", "drop_connection",
                                       "rate_limit_burst:count=1,retry_after=1"])
    def test_emulator_http_faults_are_survived(self, make_emulator, fault, caplog):
        srv = make_emulator(output_format="openai")
        ctx, saved = make_context()
        with caplog.at_level(logging.INFO, logger="plugins.http_retry"):
            text, chunks = collect(make_provider(srv.base_url),
                                   make_request(emulator_fault=fault, max_tokens=60), ctx)
        assert any("retrying" in r.getMessage() for r in caplog.records)  # the fault did hit
        assert text.strip() and text == self.final_text(srv, saved[0]["runpod_job_id"])
        assert chunks[-1].finish_reason in ("stop", "length")

    @pytest.mark.parametrize("fault, expected", [
        ("failed_handler", "emulated handler failure"),
        ("failed_generator", "emulated generator failure"),
    ])
    def test_emulator_failed_jobs(self, make_emulator, fault, expected):
        srv = make_emulator()
        with pytest.raises(ProviderError) as err:
            collect(make_provider(srv.base_url), make_request(emulator_fault=fault))
        assert expected in err.value.message and "Traceback" not in err.value.message

    def test_emulator_timed_out(self, make_emulator):
        srv = make_emulator()
        with pytest.raises(ProviderTimeout):
            collect(make_provider(srv.base_url), make_request(emulator_fault="timed_out"))

    def test_emulator_stall_is_cancelled(self, make_emulator):
        srv = make_emulator()
        provider = make_provider(srv.base_url, stall=0.5)
        ctx, saved = make_context()
        with pytest.raises(ProviderTimeout, match="no progress"):
            collect(provider, make_request(emulator_fault="stall"), ctx)
        status = provider.client.job("ep1").status(saved[0]["runpod_job_id"])
        assert status["status"] == "CANCELLED"

    def test_emulator_completed_without_output(self, make_emulator):
        srv = make_emulator()
        # The stream still carried the text, so the reply is complete without /status output.
        text, chunks = collect(make_provider(srv.base_url),
                               make_request(emulator_fault="completed_without_output",
                                            max_tokens=60))
        assert text.strip() and chunks[-1].finish_reason in ("stop", "length")

    def test_emulator_cancel(self, make_emulator):
        srv = make_emulator(tokens_per_s=50)
        provider = make_provider(srv.base_url)
        ctx, saved = make_context()
        got_text = threading.Event()
        thread, out = run_in_thread(provider, ctx, lambda c: c.text and got_text.set())
        assert got_text.wait(5)
        ctx.cancelled.set()
        provider.cancel(ctx)
        thread.join(2)
        assert not thread.is_alive() and out["error"] is None
        status = provider.client.job("ep1").status(saved[0]["runpod_job_id"])
        assert status["status"] == "CANCELLED"

    def test_emulator_reattach_after_a_crashed_attempt(self, make_emulator):
        srv = make_emulator(tokens_per_s=100)
        provider = make_provider(srv.base_url)
        ctx, saved = make_context()
        first = provider.stream(make_request(max_tokens=60), ctx)
        partial = ""
        for chunk in first:  # the first attempt reads some text, then its worker "dies"
            partial += chunk.text
            if len(partial) > 10:
                break
        first.close()
        runs_before = provider.api_calls
        retry_ctx, _ = make_context(resume_state=saved[0], attempt=2)
        text, chunks = collect(provider, make_request(max_tokens=60), retry_ctx)
        job_id = saved[0]["runpod_job_id"]
        assert text.startswith(partial) and text == self.final_text(srv, job_id)
        assert chunks[-1].meta["reattached"] is True and chunks[-1].meta["runpod_job_id"] == job_id
        assert provider.api_calls > runs_before
        jobs = srv.emulator.health("ep1")["jobs"]
        assert sum(jobs.values()) == 1  # one job only: the retry did not /run again
