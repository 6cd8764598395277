"""Conformance: RunPod's official Python SDK (runpod 1.12) against the emulator.

The SDK reads ``runpod.endpoint_url_base`` (from ``RUNPOD_ENDPOINT_BASE_URL`` at import) and
``runpod.api_key`` whenever an Endpoint is created, so both are patched per test. ``Job.stream()``
sleeps 1 s before every poll, so replies are kept short.
"""
from __future__ import annotations

import time

import pytest

from chatapp.runpod_emulator import EmulatorConfig, EmulatorServer

runpod = pytest.importorskip("runpod")

KEY = "sdk-key"


@pytest.fixture
def srv(monkeypatch):
    server = EmulatorServer(
        EmulatorConfig(cold_start_s=0.05, idle_timeout_s=0.5, ttft_s=0.02, tokens_per_s=500.0,
                       endpoints={"one": {"max_workers": 1}}),
        port=0, api_key=KEY).start()
    monkeypatch.setenv("RUNPOD_ENDPOINT_BASE_URL", server.base_url)
    monkeypatch.setattr(runpod, "endpoint_url_base", server.base_url)
    monkeypatch.setattr(runpod, "api_key", KEY)
    yield server
    server.stop()


def _wait_status(job, wanted: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while job.status() != wanted:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_run_status_output(srv):
    job = runpod.Endpoint("ep").run({"prompt": "hi there", "sampling_params": {"max_tokens": 8}})
    assert job.job_id.endswith("-u1")
    assert job.status() in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    output = job.output(timeout=10)
    assert output[0]["usage"] == {"input": 2, "output": 8}
    assert output[0]["choices"][0]["tokens"][0].startswith("[emulator]")
    assert job.status() == "COMPLETED"


def test_stream(srv):
    job = runpod.Endpoint("ep").run({"input": {"prompt": "stream me", "stream": True,
                                               "sampling_params": {"max_tokens": 30}}})
    streamed = list(job.stream())
    assert [len(o["choices"][0]["tokens"]) for o in streamed] == [1, 3, 9, 17]
    assert streamed == job.output()


def test_run_sync(srv):
    output = runpod.Endpoint("ep").run_sync({"prompt": "quick", "sampling_params":
                                             {"max_tokens": 4}}, timeout=10)
    assert output[0]["usage"]["output"] == 4


def test_cancel(srv):
    job = runpod.Endpoint("ep").run({"prompt": "x", "stream": True, "emulator_fault": "stall"})
    _wait_status(job, "IN_PROGRESS")
    assert job.cancel() == {"id": job.job_id, "status": "CANCELLED"}
    assert job.status() == "CANCELLED"


def test_health_and_purge_queue(srv):
    endpoint = runpod.Endpoint("one")
    running = endpoint.run({"prompt": "x", "emulator_fault": "stall"})
    _wait_status(running, "IN_PROGRESS")
    queued = [endpoint.run({"prompt": f"q{i}"}) for i in range(2)]
    health = endpoint.health()
    assert health["jobs"]["inQueue"] == 2 and health["jobs"]["inProgress"] == 1
    assert health["workers"]["running"] == 1
    assert endpoint.purge_queue() == {"removed": 2, "status": "completed"}
    assert [j.status() for j in queued] == ["CANCELLED", "CANCELLED"]
    running.cancel()


def test_failed_job(srv):
    job = runpod.Endpoint("ep").run({"prompt": "x", "emulator_fault": "failed_handler"})
    assert job.output(timeout=5) is None
    assert job.status() == "FAILED"


def test_sdk_retries_a_rate_limited_poll(srv):
    job = runpod.Endpoint("ep").run(
        {"prompt": "x", "emulator_fault": "rate_limit_burst:count=1,retry_after=1"})
    t0 = time.monotonic()
    assert job.status() in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    assert time.monotonic() - t0 >= 0.9  # urllib3 honoured Retry-After, then succeeded


def test_wrong_key_is_unauthorized(srv, monkeypatch):
    monkeypatch.setattr(runpod, "api_key", "wrong")
    with pytest.raises(RuntimeError, match="401 Unauthorized"):
        runpod.Endpoint("ep").run({"prompt": "x"})
