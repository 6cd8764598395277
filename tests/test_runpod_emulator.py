"""The RunPod emulator over real HTTP on loopback: every route, the semantics, faults, billing."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from chatapp.runpod_emulator import EmulatorConfig, EmulatorServer, RateLimits
from chatapp.runpod_emulator import model
from chatapp.runpod_emulator.billing import billed_seconds, micro_usd
from chatapp.runpod_emulator.faults import FaultError, parse_fault

KEY = "test-key"
FAST = dict(
    cold_start_s=0.05, idle_timeout_s=0.2, ttft_s=0.02, tokens_per_s=500.0,
    min_execution_timeout_ms=0, min_ttl_ms=0, webhook_retry_delay_s=0.05,
)
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


class Client:
    """A thin requests wrapper for one endpoint of the emulator."""

    def __init__(self, srv: EmulatorServer, endpoint: str = "ep", key: str | None = KEY):
        self.url = f"{srv.base_url}/{endpoint}"
        self.srv = srv
        self.endpoint = endpoint
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def post(self, path: str, body: object = None, **kw) -> requests.Response:
        return requests.post(f"{self.url}/{path}", json=body, headers=self.headers, timeout=10,
                             **kw)

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(f"{self.url}/{path}", headers=self.headers, timeout=10, **kw)

    def run(self, job_input: dict, **extra) -> str:
        resp = self.post("run", {"input": job_input, **extra})
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "IN_QUEUE"
        return resp.json()["id"]

    def status(self, job_id: str) -> dict:
        resp = self.get(f"status/{job_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def wait(self, job_id: str, statuses=TERMINAL, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            body = self.status(job_id)
            if body["status"] in statuses:
                return body
            assert time.monotonic() < deadline, f"job stuck in {body['status']}"
            time.sleep(0.01)

    def stream_all(self, job_id: str, wait_ms: int = 2000) -> tuple[list, dict]:
        """Read /stream until done; returns the items' outputs and the last body."""
        outputs: list = []
        while True:
            body = self.get(f"stream/{job_id}", params={"wait": wait_ms}).json()
            outputs += [item["output"] for item in body["stream"]]
            if body["status"] in TERMINAL and not body["stream"]:
                return outputs, body


@pytest.fixture
def make_server():
    servers: list[EmulatorServer] = []

    def factory(api_key: str | None = KEY, **overrides) -> EmulatorServer:
        srv = EmulatorServer(EmulatorConfig(**{**FAST, **overrides}), port=0, api_key=api_key)
        servers.append(srv.start())
        return srv

    yield factory
    for srv in servers:
        srv.stop()


@pytest.fixture
def srv(make_server) -> EmulatorServer:
    return make_server()


@pytest.fixture
def client(srv) -> Client:
    return Client(srv)


def chat(text: str = "hello there", stream: bool = True, max_tokens: int | None = None,
         **extra) -> dict:
    job_input = {"messages": [{"role": "system", "content": "You are a pirate.\nSay arr."},
                              {"role": "user", "content": text}], "stream": stream, **extra}
    if max_tokens:
        job_input["sampling_params"] = {"max_tokens": max_tokens}
    return job_input


def sse_events(text: str) -> list[str]:
    """Split reassembled SSE text into its data payloads."""
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") for e in events)
    return [e[len("data: "):] for e in events]


# -- routes and envelopes ---------------------------------------------------------------------


def test_run_stream_status_classic(client):
    job_id = client.run(chat(max_tokens=100))
    assert job_id.endswith("-u1") and not job_id.startswith("sync-")
    outputs, last = client.stream_all(job_id)
    assert last == {"status": "COMPLETED", "stream": []}
    # The vLLM worker's batches: 1, 3, 9, 27, then 50 per yield.
    assert [len(o["choices"][0]["tokens"]) for o in outputs] == [1, 3, 9, 27, 50, 10]
    assert [o["usage"]["output"] for o in outputs] == [1, 4, 13, 40, 90, 100]
    text = "".join(t for o in outputs for t in o["choices"][0]["tokens"])
    assert text.startswith('[emulator] You said: "hello there". (persona: You are a pirate.)')
    assert "not a language model" in text
    env = client.status(job_id)
    assert env["output"] == outputs  # concatenation of all stream items == final output
    assert set(env) == {"id", "status", "delayTime", "executionTime", "workerId", "output"}
    assert env["delayTime"] >= 50 and env["executionTime"] >= 200  # ttft + 99 tokens at 500/s


def test_non_stream_classic_is_one_item_with_the_same_text(client):
    streamed = client.wait(client.run(chat(max_tokens=30)))["output"]
    whole = client.wait(client.run(chat(stream=False, max_tokens=30)))["output"]
    assert len(whole) == 1 and len(whole[0]["choices"][0]["tokens"]) == 1
    assert whole[0]["choices"][0]["tokens"][0] == "".join(
        t for o in streamed for t in o["choices"][0]["tokens"])
    assert whole[0]["usage"] == {"input": 8, "output": 30}  # words of all messages


def test_prompt_input_and_default_length(client):
    out = client.wait(client.run({"prompt": "one two three"}))["output"]
    assert out[0]["usage"] == {"input": 3, "output": 64}  # default max_tokens


def test_stream_consumes_items_and_concatenation_matches(make_server):
    srv = make_server(tokens_per_s=100.0)
    c = Client(srv)
    job_id = c.run(chat(max_tokens=60))
    seen: list = []
    while True:  # poll without wait: many empty and partial reads
        body = c.get(f"stream/{job_id}").json()
        seen += [json.dumps(i["output"], sort_keys=True) for i in body["stream"]]
        if body["status"] in TERMINAL and not body["stream"]:
            break
        time.sleep(0.005)
    assert len(seen) == len(set(seen))  # never the same item twice
    final = c.status(job_id)["output"]
    assert seen == [json.dumps(o, sort_keys=True) for o in final]
    assert c.get(f"stream/{job_id}").json() == {"status": "COMPLETED", "stream": []}


def test_openai_format_stream_is_split_sse(make_server):
    srv = make_server(endpoints={"oa": {"output_format": "openai"}})
    c = Client(srv, "oa")
    outputs, _ = c.stream_all(c.run(chat(max_tokens=40, stream_options={"include_usage": True})))
    assert all(isinstance(o, str) for o in outputs)
    assert any(not o.endswith("\n\n") for o in outputs[:-1])  # cut inside events
    events = sse_events("".join(outputs))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.startswith("[emulator] You said:")
    assert chunks[-1]["usage"]["completion_tokens"] == 40 and chunks[-1]["choices"] == []
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


def test_openai_format_non_stream_is_one_completion(make_server):
    srv = make_server(output_format="openai")
    c = Client(srv)
    out = c.wait(c.run(chat(stream=False, max_tokens=20)))["output"]
    assert len(out) == 1 and out[0]["object"] == "chat.completion"
    assert out[0]["choices"][0]["message"]["content"].startswith("[emulator]")
    assert out[0]["usage"]["completion_tokens"] == 20


def test_openai_route_stream_and_non_stream(client):
    body = {"model": "my-model", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 12}
    resp = client.post("openai/v1/chat/completions", body)
    assert resp.status_code == 200 and resp.json()["object"] == "chat.completion"
    assert resp.json()["model"] == "my-model"
    resp = client.post("openai/v1/chat/completions",
                       {**body, "stream": True, "stream_options": {"include_usage": True}},
                       stream=True)
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 12
    assert client.post("openai/v1/chat/completions", {"nope": 1}).status_code == 400
    assert client.get("openai/v1/models").json()["data"][0]["id"] == "emulator/demo-echo"
    assert requests.post(f"{client.url}/openai/v1/chat/completions", json=body).status_code == 401


def test_runsync_finished_and_unfinished(make_server):
    srv = make_server(endpoints={"slow": {"cold_start_s": 1.6}})
    fast, slow = Client(srv), Client(srv, "slow")
    env = fast.post("runsync", {"input": chat(max_tokens=10)}).json()
    assert env["id"].startswith("sync-") and env["id"].endswith("-u1")
    assert env["status"] == "COMPLETED" and env["output"][0]["usage"]["output"] == 1
    t0 = time.monotonic()
    env = slow.post("runsync?wait=1000", {"input": chat(max_tokens=5)}).json()
    assert 0.9 < time.monotonic() - t0 < 1.55
    assert set(env) == {"id", "status"} and env["status"] == "IN_QUEUE"
    assert slow.wait(env["id"])["status"] == "COMPLETED"


def test_auth(make_server):
    srv = make_server()
    assert Client(srv, key=None).post("run", {"input": {"prompt": "x"}}).status_code == 401
    assert Client(srv, key="wrong").get("health").status_code == 401
    bare = requests.get(f"{srv.base_url}/ep/health", headers={"Authorization": KEY}, timeout=5)
    assert bare.status_code == 200
    open_srv = make_server(api_key=None)
    assert Client(open_srv, key=None).get("health").status_code == 200


def test_bad_requests(make_server):
    c = Client(make_server(endpoints={"tiny": {"max_payload_bytes": 200}}))
    post = lambda path, data, ep="ep": requests.post(  # noqa: E731
        f"{c.srv.base_url}/{ep}/{path}", data=data, headers=c.headers, timeout=5)
    assert post("run", b"{not json").status_code == 400
    assert post("run", b'{"inputs": {}}').status_code == 400
    assert post("run", b"[1, 2]").status_code == 400
    assert post("run", json.dumps({"input": {"prompt": "x" * 300}}), "tiny").status_code == 400
    assert post("runsync", b"{}").status_code == 400
    assert c.post("run", {"input": {}, "policy": {"executionTimeout": "soon"}}).status_code == 400
    assert c.post("run", {"input": {}, "webhook": 5}).status_code == 400
    assert c.post("run", {"input": {"prompt": "x", "emulator_fault": "nope"}}).status_code == 400
    assert c.get("status/not-a-job").status_code == 404
    assert c.get("stream/not-a-job").status_code == 404
    assert c.post("cancel/not-a-job").status_code == 404
    assert c.get("no-such-route").status_code == 404


def test_policy_minimums_enforced_by_default(make_server):
    c = Client(make_server(min_execution_timeout_ms=5000, min_ttl_ms=10000))
    assert c.post("run", {"input": {}, "policy": {"executionTimeout": 1000}}).status_code == 400
    assert c.post("run", {"input": {}, "policy": {"ttl": 5000}}).status_code == 400
    assert c.post("run", {"input": {}, "policy": {"executionTimeout": 6000}}).status_code == 200


def test_invalid_input_fails_like_the_worker(client):
    env = client.wait(client.run({"neither": "messages nor prompt"}))
    assert env["status"] == "FAILED" and env["error"].startswith("handler: ")
    assert "output" not in env


def test_strict_endpoints(make_server):
    srv = make_server(strict_endpoints=True, endpoints={"known": {}})
    assert Client(srv, "known").get("health").status_code == 200
    assert Client(srv, "other").get("health").status_code == 404


# -- retention, ttl, timeouts -----------------------------------------------------------------


def test_results_expire_after_retention(make_server):
    c = Client(make_server(retention_s=0.3, sync_retention_s=0.15))
    job_id = c.run(chat(max_tokens=5))
    c.wait(job_id)
    sync_id = c.post("runsync", {"input": chat(max_tokens=5)}).json()["id"]
    assert c.get(f"status/{sync_id}").status_code == 200
    time.sleep(0.2)
    assert c.get(f"status/{sync_id}").status_code == 404
    assert c.get(f"status/{job_id}").status_code == 200
    time.sleep(0.2)
    assert c.get(f"status/{job_id}").status_code == 404
    assert c.get(f"stream/{job_id}").status_code == 404


def test_ttl_deletes_a_queued_job(make_server):
    c = Client(make_server(max_workers=1))
    blocker = c.run(chat(emulator_fault="stall:after_tokens=1"))
    job_id = c.run(chat(), policy={"ttl": 300})
    assert c.status(job_id)["status"] == "IN_QUEUE"
    time.sleep(0.4)
    assert c.get(f"status/{job_id}").status_code == 404
    c.post(f"cancel/{blocker}")


def test_execution_timeout(client, srv):
    job_id = client.run(chat(emulator_fault="stall"), policy={"executionTimeout": 200})
    env = client.wait(job_id)
    assert env["status"] == "TIMED_OUT" and env["executionTime"] == 200
    bill = srv.emulator.billing("ep")
    assert bill["workers"][0]["stop_reason"] == "execution_timeout"  # RunPod stops the worker


# -- long-poll --------------------------------------------------------------------------------


def test_stream_wait_honoured(make_server):
    c = Client(make_server(ttft_s=0.4))
    job_id = c.run(chat(max_tokens=5))
    t0 = time.monotonic()
    body = c.get(f"stream/{job_id}", params={"wait": 3000}).json()
    elapsed = time.monotonic() - t0
    assert body["stream"] and 0.3 < elapsed < 2
    stalled = c.run(chat(emulator_fault="stall:after_tokens=1"))
    c.get(f"stream/{stalled}", params={"wait": 2000})  # the first item
    t0 = time.monotonic()
    body = c.get(f"stream/{stalled}", params={"wait": 300}).json()
    assert body == {"status": "IN_PROGRESS", "stream": []}
    assert 0.25 < time.monotonic() - t0 < 1.5
    c.post(f"cancel/{stalled}")


def test_stream_wait_not_honoured(make_server):
    c = Client(make_server(ttft_s=0.4, honor_stream_wait=False))
    job_id = c.run(chat(max_tokens=5))
    t0 = time.monotonic()
    body = c.get(f"stream/{job_id}", params={"wait": 3000}).json()
    assert time.monotonic() - t0 < 0.3
    assert body["stream"] == [] and body["status"] in ("IN_QUEUE", "IN_PROGRESS")


# -- cancel, retry, purge, health -------------------------------------------------------------


def test_cancel_queued_and_running(make_server):
    c = Client(make_server(max_workers=1))
    running = c.run(chat(emulator_fault="stall:after_tokens=1"))
    c.wait(running, {"IN_PROGRESS"})
    queued = c.run(chat())
    assert c.post(f"cancel/{queued}").json() == {"id": queued, "status": "CANCELLED"}
    assert c.post(f"cancel/{running}").json() == {"id": running, "status": "CANCELLED"}
    env = c.status(running)
    assert env["status"] == "CANCELLED" and env["executionTime"] >= 0
    assert c.status(queued) == {"id": queued, "status": "CANCELLED"}
    # The worker is free again: a new job runs at once.
    assert c.wait(c.run(chat(max_tokens=3)))["status"] == "COMPLETED"


def test_retry_failed_job(client):
    job_id = client.run(chat(emulator_fault="failed_handler"))
    env = client.wait(job_id)
    assert env["status"] == "FAILED"
    assert client.post(f"retry/{job_id}").json() == {"id": job_id, "status": "IN_QUEUE"}
    env = client.wait(job_id)
    assert env["status"] == "COMPLETED" and "error" not in env and env["id"] == job_id
    assert client.post(f"retry/{job_id}").status_code == 400  # only FAILED / TIMED_OUT
    assert client.get("health").json()["jobs"]["retried"] == 1


def test_purge_queue_and_its_rate_limit(make_server):
    c = Client(make_server(max_workers=1))
    running = c.run(chat(emulator_fault="stall:after_tokens=1"))
    c.wait(running, {"IN_PROGRESS"})
    queued = [c.run(chat()) for _ in range(3)]
    assert c.post("purge-queue").json() == {"removed": 3, "status": "completed"}
    assert all(c.status(j)["status"] == "CANCELLED" for j in queued)
    assert c.status(running)["status"] == "IN_PROGRESS"
    assert c.post("purge-queue").json()["removed"] == 0
    resp = c.post("purge-queue")  # RunPod allows 2 per 10 s
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1
    c.post(f"cancel/{running}")


def test_health_counts(make_server):
    c = Client(make_server(max_workers=2, idle_timeout_s=5))
    assert c.get("health").json() == {
        "jobs": {"completed": 0, "failed": 0, "inProgress": 0, "inQueue": 0, "retried": 0},
        "workers": {"idle": 0, "initializing": 0, "ready": 0, "running": 0, "throttled": 0,
                    "unhealthy": 0}}
    c.wait(c.run(chat(max_tokens=3)))
    c.wait(c.run(chat(emulator_fault="failed_generator")))
    stalled = [c.run(chat(emulator_fault="stall:after_tokens=1")) for _ in range(2)]
    for job_id in stalled:
        c.wait(job_id, {"IN_PROGRESS"})
    queued = c.run(chat())
    health = c.get("health").json()
    assert health["jobs"] == {"completed": 1, "failed": 1, "inProgress": 2, "inQueue": 1,
                              "retried": 0}
    assert health["workers"]["running"] == 2 and health["workers"]["idle"] == 0
    for job_id in [queued] + stalled:  # the queued one first, so no worker picks it up
        c.post(f"cancel/{job_id}")
    assert c.get("health").json()["workers"]["idle"] == 2


def test_workers_boot_cold_then_stay_warm(srv, client):
    first = client.wait(client.run(chat(max_tokens=3)))
    second = client.wait(client.run(chat(max_tokens=3)))
    assert first["delayTime"] >= 50 and second["delayTime"] < 40
    assert first["workerId"] == second["workerId"]
    jobs = srv.emulator.billing("ep")["jobs"]
    assert [j["cold_start_s"] for j in jobs] == [0.05, 0.0]


def test_low_priority_does_not_scale_up(client):
    job_id = client.run(chat(), policy={"lowPriority": True})
    time.sleep(0.15)
    assert client.status(job_id)["status"] == "IN_QUEUE"
    assert client.get("health").json()["workers"]["initializing"] == 0
    client.run(chat(max_tokens=2))  # a normal job boots a worker, which then serves both
    assert client.wait(job_id)["status"] == "COMPLETED"


def test_rate_limits(make_server):
    c = Client(make_server(rate_limits=RateLimits(window_s=0.5, status=3)))
    job_id = c.run({"prompt": "x"})
    codes = [c.get(f"status/{job_id}").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    time.sleep(0.55)
    assert c.get(f"status/{job_id}").status_code == 200


def test_webhook_posts_final_envelope(client):
    received: list = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - stdlib name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200 if len(received) > 1 else 500)  # first attempt fails
            self.end_headers()

        def log_message(self, *args):
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        job_id = client.run(chat(max_tokens=3), webhook=f"http://127.0.0.1:{hook.server_port}/h")
        client.run(chat(max_tokens=3), webhook="http://example.invalid/h")  # never called
        deadline = time.monotonic() + 5
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(received) == 2  # retried after the 500
        assert received[1]["id"] == job_id and received[1]["status"] == "COMPLETED"
        assert received[1]["output"] == client.status(job_id)["output"]
    finally:
        hook.shutdown()
        hook.server_close()


# -- faults -----------------------------------------------------------------------------------


def test_fault_rate_limit_burst_and_server_error(srv, client):
    job_id = client.run(chat(max_tokens=3))
    srv.emulator.arm_fault("ep", "rate_limit_burst:count=2,retry_after=3")
    for _ in range(2):
        resp = client.get(f"status/{job_id}")
        assert resp.status_code == 429 and resp.headers["Retry-After"] == "3"
    assert client.get(f"status/{job_id}").status_code == 200
    srv.emulator.arm_fault("ep", {"name": "server_error", "count": 1})
    assert client.get("health").status_code == 500
    assert client.get("health").status_code == 200


def test_fault_per_request_http_faults_hit_that_job(client):
    job_id = client.run(chat(max_tokens=3, emulator_fault="rate_limit_burst:count=1"))
    other = client.run(chat(max_tokens=3))
    assert client.get(f"status/{other}").status_code == 200
    assert client.get(f"status/{job_id}").status_code == 429
    assert client.get(f"status/{job_id}").status_code == 200


def test_fault_drop_connection(client):
    job_id = client.run(chat(max_tokens=3, emulator_fault="drop_connection:count=2"))
    for path in (f"status/{job_id}", f"stream/{job_id}"):
        with pytest.raises(requests.ConnectionError):
            client.get(path)
    assert client.wait(job_id)["status"] == "COMPLETED"


def test_fault_failed_handler_error_is_json(client):
    env = client.wait(client.run(chat(emulator_fault={"name": "failed_handler",
                                                      "message": "CUDA OOM"})))
    assert env["status"] == "FAILED"
    error = json.loads(env["error"])
    assert set(error) == {"error_type", "error_message", "error_traceback", "hostname",
                          "worker_id", "runpod_version"}
    assert error["error_message"] == "CUDA OOM" and error["worker_id"] == env["workerId"]


def test_fault_failed_generator_after_some_output(client):
    job_id = client.run(chat(emulator_fault="failed_generator:after_tokens=4,message=boom"))
    outputs, last = client.stream_all(job_id)
    assert last["status"] == "FAILED" and last["error"].startswith("handler: boom \ntraceback: ")
    assert [o["usage"]["output"] for o in outputs] == [1, 4]


def test_fault_timed_out(client):
    env = client.wait(client.run(chat(emulator_fault="timed_out:after_s=0.1")))
    assert env["status"] == "TIMED_OUT" and env["executionTime"] == 100


def test_fault_stall_for_a_while(client):
    job_id = client.run(chat(max_tokens=20, emulator_fault="stall:after_tokens=4,seconds=0.3"))
    client.get(f"stream/{job_id}", params={"wait": 2000})
    t0 = time.monotonic()
    outputs, last = client.stream_all(job_id)
    assert last["status"] == "COMPLETED" and time.monotonic() - t0 > 0.2
    assert client.status(job_id)["executionTime"] >= 300


def test_fault_completed_without_output(client):
    job_id = client.run(chat(max_tokens=5, emulator_fault="completed_without_output"))
    outputs, last = client.stream_all(job_id)
    assert last["status"] == "COMPLETED" and outputs  # the stream was delivered
    env = client.status(job_id)
    assert env["status"] == "COMPLETED" and "output" not in env


def test_fault_cold_start_override(client):
    client.wait(client.run(chat(max_tokens=2)))  # a warm worker exists now
    env = client.wait(client.run(chat(max_tokens=2,
                                      emulator_fault={"name": "cold_start", "seconds": 0.3})))
    assert env["delayTime"] >= 300


def test_endpoint_faults_from_config(make_server):
    c = Client(make_server(faults=["failed_handler:count=1"]))
    assert c.wait(c.run(chat(max_tokens=2)))["status"] == "FAILED"
    assert c.wait(c.run(chat(max_tokens=2)))["status"] == "COMPLETED"


def test_fault_parser():
    fault = parse_fault("stall:after_tokens=3,seconds=1.5")
    assert fault.params == {"after_tokens": 3, "seconds": 1.5} and fault.kind == "job"
    assert parse_fault({"name": "server_error"}).remaining == 1
    with pytest.raises(FaultError):
        parse_fault("melt_gpu")


# -- billing ----------------------------------------------------------------------------------


def test_billing_arithmetic(make_server):
    # Cold start 0.5 s, execution 0.2 s ttft + 10 tokens / 10 per s = 1.2 s, idle 5 s: 6.7 s.
    srv = make_server(cold_start_s=0.5, ttft_s=0.2, tokens_per_s=10.0, idle_timeout_s=5.0,
                      endpoints={"h100": {"price_per_s": 0.00116}})
    c = Client(srv, "h100")
    plain = Client(srv, "l4")
    job_id = c.run(chat(max_tokens=11))
    other = plain.run(chat(max_tokens=11))
    env = c.wait(job_id)
    plain.wait(other)
    assert env["delayTime"] == 500 and env["executionTime"] == 1200
    open_bill = c.get("billing").json()
    assert open_bill["complete"] is False and open_bill["workers"][0]["stop"] is None
    bill = c.get("billing", params={"settle": "true"}).json()
    assert bill["complete"] is True
    (worker,) = bill["workers"]
    assert worker["billed_seconds"] == 7 and worker["job_ids"] == [job_id]
    assert (worker["cold_start_s"], worker["execution_s"], worker["idle_s"]) == (0.5, 1.2, 5.0)
    assert bill["total_micro_usd"] == 7 * 1160 == 8120 and bill["total_usd"] == 0.00812
    assert bill["jobs"] == [{"job_id": job_id, "worker_id": env["workerId"], "status": "COMPLETED",
                             "delayTime": 500, "executionTime": 1200, "cold_start_s": 0.5, "started_s": 0.5, "ended_s": 1.7}]
    assert plain.get("billing?settle=1").json()["total_micro_usd"] == 7 * 190


def test_billing_helpers():
    assert billed_seconds(0.5 + 1.2 + 5.0) == 7
    assert billed_seconds(3.0000000000000004) == 3 and billed_seconds(0.01) == 1
    assert micro_usd(7, 0.00019) == 1330 and micro_usd(1, 0.00155) == 1550


def test_billing_two_jobs_on_one_worker(srv, client):
    client.wait(client.run(chat(max_tokens=5)))
    client.wait(client.run(chat(max_tokens=5)))
    time.sleep(0.3)  # past the idle timeout: the session is closed for real
    bill = client.get("billing").json()
    (worker,) = bill["workers"]
    assert worker["final"] and worker["stop_reason"] == "idle_timeout"
    assert len(worker["job_ids"]) == 2 and worker["billed_seconds"] == 1
    assert bill["total_micro_usd"] == 190


# -- model and load ---------------------------------------------------------------------------


def test_demo_model_is_deterministic():
    parsed = model.parse_input(chat(max_tokens=40), 64, 8192)
    a, b = model.demo_reply(parsed), model.demo_reply(parsed)
    assert a.pieces == b.pieces and len(a.pieces) == 40 and a.finish_reason == "stop"
    assert model.batch_sizes(100) == [1, 3, 9, 27, 50, 10]
    short = model.demo_reply(model.parse_input(chat(max_tokens=3), 64, 8192))
    assert short.text == "[emulator] You said:" and short.finish_reason == "length"


def test_many_concurrent_streaming_jobs(make_server):
    srv = make_server(max_workers=200, tokens_per_s=200.0, rate_limits=RateLimits(enabled=False))
    c = Client(srv)

    def one(i: int) -> bool:
        job_id = c.run(chat(f"job {i}", max_tokens=40))
        outputs, last = c.stream_all(job_id, wait_ms=5000)
        return last["status"] == "COMPLETED" and outputs == c.status(job_id)["output"]

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(one, range(200)))
    assert all(results) and len(results) == 200
    assert time.monotonic() - t0 < 20
    health = c.get("health").json()
    assert health["jobs"]["completed"] == 200


# -- command line -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_command_line_serves_and_never_logs_the_key():
    port = _free_port()
    env = {**os.environ, "RUNPOD_API_KEY": "cli-secret-key"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatapp.runpod_emulator", "--host", "127.0.0.1", "--port",
         str(port), "--cold-start", "0.01", "--fault", "server_error:count=1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/v2/cli"
        deadline = time.monotonic() + 15
        while True:
            try:
                resp = requests.get(f"{url}/health", headers={"Authorization": "Bearer x"},
                                    timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        assert resp.status_code == 401
        auth = {"Authorization": "Bearer cli-secret-key"}
        assert requests.get(f"{url}/health", headers=auth, timeout=2).status_code == 500
        env_ = requests.post(f"{url}/runsync", json={"input": {"prompt": "hi"}}, headers=auth,
                             timeout=10).json()
        assert env_["status"] == "COMPLETED"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "serving http://127.0.0.1" in out and "cli-secret-key" not in out
    assert "GET /v2/cli/health 401" in out  # the access log


def test_ledger_archives_old_rows_but_keeps_the_total():
    from chatapp.runpod_emulator.billing import JobCharge, Ledger

    ledger = Ledger(0.00019, max_rows=10)
    for i in range(25):
        session = ledger.open_session(f"w{i}", float(i), 0.5)
        session.stop, session.busy_s = i + 2.5, 1.0  # 2.5 s each: 3 s billed
        ledger.add_charge(JobCharge(f"j{i}", f"w{i}", "COMPLETED", 500, 1000, 0.5))
    bill = ledger.report(now=100.0)
    assert len(bill["workers"]) <= 10 and len(bill["jobs"]) <= 10
    assert bill["billed_seconds"] == 75 and bill["total_micro_usd"] == 75 * 190
    assert bill["archived"]["sessions"] + len(bill["workers"]) == 25


def test_scheduler_drops_cancelled_timers():
    from chatapp.runpod_emulator.scheduler import Scheduler

    lock = threading.Lock()
    sched = Scheduler(lock)
    try:
        fired: list[float] = []
        handles = [sched.call_at(time.monotonic() + 86400, fired.append) for _ in range(3000)]
        sched.call_at(time.monotonic() + 0.05, fired.append)
        for handle in handles:
            handle.cancel()
        assert len(sched._heap) < 1500  # compacted: 24 h timers do not pile up
        deadline = time.monotonic() + 2
        while not fired and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(fired) == 1
    finally:
        sched.stop()
