"""The whole pipeline against the bundled RunPod emulator: websocket -> web -> RQ -> worker ->
runpod provider -> emulator -> back, including Stop, billing and every emulator fault."""
from __future__ import annotations

import json
import math
import time

import pytest

from chatapp.runpod_emulator import EmulatorConfig, EmulatorServer
from plugins.runpod_formats import decode_output
from tests.conftest import InThreadWorker, LiveServer, close_app, make_app
from tests.processes import Proc, env_for, python
from tests.wsclient import WS, assert_gap_free, text_of

EP = "ep-test"
PRICE_MICROS = 190  # L4 flex price, micro-USD per second


@pytest.fixture()
def emulator_overrides():
    """Per-endpoint emulator settings; a test overrides them by parametrizing this name."""
    return {}


@pytest.fixture()
def emulator(emulator_overrides):
    cfg = EmulatorConfig(cold_start_s=0.3, idle_timeout_s=0.3, ttft_s=0.05, tokens_per_s=100,
                         min_execution_timeout_ms=0, min_ttl_ms=0, endpoints={EP: emulator_overrides})
    srv = EmulatorServer(cfg, host="127.0.0.1", port=0, api_key="emu-key")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture()
def runpod_config(app_config, emulator):
    return {**app_config, "DEFAULT_PROVIDER": "runpod", "RUNPOD_API_KEY": "emu-key", "RUNPOD_ENDPOINT_ID": EP,
            "RUNPOD_BASE_URL": emulator.base_url, "RUNPOD_GPU": "L4", "RUNPOD_STALL_TIMEOUT_S": 1.5}


@pytest.fixture()
def stack(runpod_config):
    app = make_app(runpod_config)
    ext = app.extensions["chatapp"]
    worker = InThreadWorker(ext)
    live = LiveServer(app)
    key = ext.users.create("rp")[1]
    yield ext, live, key
    live.stop()
    worker.stop()
    close_app(app)


def converse(live, key, content="Hello RunPod", params=None, timeout=30):
    ws = WS(live.ws_url, key)
    ws.send({"type": "send", "conversation_id": None, "content": content, "params": params or {}})
    accepted = ws.recv()
    assert accepted["type"] == "accepted", accepted
    frames = ws.reply_frames(accepted["message_id"], timeout=timeout)
    ws.close()
    return accepted["message_id"], frames


def record(ext, mid):
    h = ext.redis.hgetall(f"{ext.prefix}msg:{mid}")
    h["meta"] = json.loads(h.get("meta") or "{}")
    return h


def jobs(emulator):
    return list(emulator.emulator.pool(EP).jobs.values())


@pytest.mark.parametrize("emulator_overrides", [{"output_format": "classic"}, {"output_format": "openai"}])
def test_reply_streams_through_runpod_and_is_billed_by_the_second(stack, emulator):
    ext, live, key = stack
    mid, frames = converse(live, key, params={"max_tokens": 40})
    assert_gap_free(frames)
    states = [f["state"] for f in frames if f["type"] == "status"]
    assert states[0] == "queued" and "generating" in states
    assert "provider_queued" in states  # the cold start shows as waiting for a GPU
    done = frames[-1]
    rec = record(ext, mid)
    assert done["type"] == "done" and done["finish_reason"] in ("stop", "length")
    assert text_of(frames) == rec["content"] and rec["content"].startswith("[emulator]")
    billed = math.ceil(rec["meta"]["execution_ms"] / 1000)
    assert int(rec["cost_micros"]) == billed * PRICE_MICROS and done["cost_usd"] == billed * PRICE_MICROS / 1e6
    assert len(jobs(emulator)) == 1 and rec["meta"]["runpod_job_id"] == jobs(emulator)[0].id


@pytest.mark.parametrize("emulator_overrides", [{"tokens_per_s": 20}])
def test_stop_cancels_the_runpod_job_and_bills_what_ran(stack, emulator):
    ext, live, key = stack
    ws = WS(live.ws_url, key)
    ws.send({"type": "send", "conversation_id": None, "content": "long one", "params": {"max_tokens": 400}})
    mid = ws.recv()["message_id"]
    ws.until(lambda f: f.get("type") == "delta" and f["seq"] >= 4)
    ws.send({"type": "cancel", "message_id": mid})
    done = ws.until(lambda f: f.get("message_id") == mid and f["type"] in ("done", "error"), timeout=10)[-1]
    assert done["type"] == "done" and done["finish_reason"] == "cancelled"
    job = jobs(emulator)[0]
    deadline = time.time() + 5
    while job.status != "CANCELLED" and time.time() < deadline:
        time.sleep(0.05)
    assert job.status == "CANCELLED"
    rec = record(ext, mid)
    assert rec["state"] == "cancelled" and rec["content"]
    assert rec["meta"]["execution_ms"] > 0
    assert int(rec["cost_micros"]) == math.ceil(rec["meta"]["execution_ms"] / 1000) * PRICE_MICROS > 0


@pytest.mark.parametrize("fault,state,code,text", [
    ("failed_handler:count=1", "failed", "provider_error", "emulated handler failure"),
    ("failed_generator:count=1", "failed", "provider_error", "emulated generator failure"),
    ("timed_out:count=1", "failed", "provider_timeout", None),
    ("stall:count=1", "failed", "provider_timeout", None),
    ("completed_without_output:count=1", "done", None, None),
    ("rate_limit_burst:count=3", "done", None, None),
    ("server_error:count=2,routes=stream|status", "done", None, None),
    # a 500 on /run may or may not have started a job: failing clearly beats paying twice
    ("server_error:count=1,routes=run", "failed", "provider_unavailable", "not repeated automatically"),
    ("drop_connection:count=2", "done", None, None),
])
def test_every_emulator_fault_ends_cleanly(stack, emulator, fault, state, code, text):
    ext, live, key = stack
    emulator.emulator.pool(EP)  # the endpoint exists before the fault is armed
    emulator.emulator.arm_fault(EP, fault)
    started = time.time()
    mid, frames = converse(live, key, params={"max_tokens": 30}, timeout=30)
    assert time.time() - started < 20
    assert_gap_free(frames)
    rec = record(ext, mid)
    assert rec["state"] == state
    assert text_of(frames) == rec["content"]  # nothing lost, nothing doubled
    last = frames[-1]
    if state == "failed":
        assert last["type"] == "error" and last["code"] == code
        if text:
            assert text in last["message"]
        assert "Traceback" not in last["message"] and "traceback" not in last["message"]
    else:
        assert last["type"] == "done" and rec["content"].startswith("[emulator]")
    # retries never paid for a second job (a refused /run created none)
    assert len(jobs(emulator)) == (0 if "routes=run" in fault else 1)


@pytest.mark.slow
@pytest.mark.parametrize("emulator_overrides", [{"tokens_per_s": 15}])
def test_killed_worker_reattaches_to_the_same_runpod_job(runpod_config, emulator, tmp_path):
    app = make_app(runpod_config)
    ext = app.extensions["chatapp"]
    env = env_for(runpod_config)
    first = Proc(python("-m", "workers", "--concurrency", "4"), env, str(tmp_path / "w1.log"))
    second = None
    try:
        user = ext.users.create("reattach")[0]
        acc = ext.chat.send(user, conversation_id=None, content="reattach me", params={"max_tokens": 60})
        partial = f"{ext.prefix}msg:{acc.message_id}:partial"
        deadline = time.time() + 30
        while len(ext.redis.get(partial) or "") < 40:
            assert time.time() < deadline, first.output()
            time.sleep(0.05)
        first.kill()
        second = Proc(python("-m", "workers", "--concurrency", "4"), env, str(tmp_path / "w2.log"))
        final = ext.relay.wait(acc.message_id, 40)
        assert final and final["type"] == "done", second.output()
        rec = record(ext, acc.message_id)
        assert rec["meta"].get("reattached") is True and rec["attempt"] == "2"
        assert len(jobs(emulator)) == 1  # the retry reattached instead of paying again
        frames = [{"type": f["t"], "seq": int(i.split("-")[1]), **json.loads(f["d"])}
                  for i, f in ext.redis.xrange(f"{ext.prefix}ev:{acc.message_id}")]
        assert_gap_free(frames)
        assert text_of(frames) == rec["content"] == decode_output(list(jobs(emulator)[0].items)).text
    finally:
        first.kill()
        if second:
            second.kill()
        close_app(app)
