"""RunPod benchmarks for issue 3, against the bundled emulator run as its own process.

    python -m bench.runpod ttft       # time to first token: whole pipeline vs the official SDK's job.stream()
    python -m bench.runpod calls      # RunPod API calls per completed job at a 10 s generation
    python -m bench.runpod capacity   # the emulator carrying 200 concurrent streaming jobs
    python -m bench.runpod all

The SDK (``pip install -e '.[test]'``) is pointed at the same emulator endpoint, in the same run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import requests

from bench.harness import ROOT, Stack, capped, free_port, run_cli, summary

KEY = "bench-key"
EP = "bench-ep"


class EmulatorProcess:
    def __init__(self, *flags: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chatapp.runpod_emulator", "--port", str(self.port), "--api-key", KEY,
             "--no-access-log", "--log-level", "WARNING", "--no-rate-limits", *flags],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base_url = f"http://127.0.0.1:{self.port}/v2"
        deadline = time.time() + 20
        while True:
            try:
                requests.get(f"{self.base_url}/{EP}/health", headers={"Authorization": KEY}, timeout=1)
                return
            except requests.ConnectionError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def pipeline_env(emu: EmulatorProcess) -> dict[str, str]:
    return {"RUNPOD_API_KEY": KEY, "RUNPOD_ENDPOINT_ID": EP, "RUNPOD_BASE_URL": emu.base_url, "RUNPOD_GPU": "L4"}


def pipeline_ttft(stack: Stack, max_tokens: int) -> tuple[float, dict[str, Any]]:
    """Seconds from sending on the websocket to the first delta; and the finished reply."""
    import websocket

    ws = websocket.create_connection(stack.ws_url, header=[f"Authorization: Bearer {stack.key}"], timeout=60,
                                     suppress_origin=True)
    t0 = time.perf_counter()
    ws.send(json.dumps({"type": "send", "conversation_id": None, "content": "benchmark question",
                        "params": {"max_tokens": max_tokens, "cache": "skip"}}))  # same question each time
    first = None
    mid = conv = None
    while True:
        frame = json.loads(ws.recv())
        if frame["type"] == "accepted":
            mid, conv = frame["message_id"], frame["conversation_id"]
        elif frame["type"] == "delta" and first is None:
            first = time.perf_counter() - t0
        elif frame["type"] in ("done", "error") and frame.get("message_id") == mid:
            break
    ws.close()
    reply = requests.get(f"{stack.url}/api/v1/conversations/{conv}/messages/{mid}",
                         headers={"Authorization": f"Bearer {stack.key}"}, timeout=10).json()
    return first or float("nan"), reply


def sdk_ttft(emu: EmulatorProcess, max_tokens: int) -> float:
    """Seconds from Endpoint.run() to the first item of job.stream(), with the official SDK."""
    os.environ["RUNPOD_ENDPOINT_BASE_URL"] = emu.base_url
    import runpod

    runpod.api_key = KEY
    runpod.endpoint_url_base = emu.base_url
    endpoint = runpod.Endpoint(EP)
    t0 = time.perf_counter()
    job = endpoint.run({"prompt": "benchmark question", "sampling_params": {"max_tokens": max_tokens},
                        "stream": True})
    for _item in job.stream():
        return time.perf_counter() - t0
    return float("nan")


def bench_ttft(trials: int = 10) -> dict[str, Any]:
    emu = EmulatorProcess("--cold-start", "0", "--idle-timeout", "30", "--ttft", "0.2", "--tokens-per-s", "50")
    stack = Stack(pipeline_env(emu))
    try:
        pipeline_ttft(stack, 5)  # warm the worker and the emulator's simulated GPU worker
        ours, theirs = [], []
        for _ in range(trials):  # interleaved, so drift hits both alike
            ours.append(pipeline_ttft(stack, 20)[0] * 1000)
            theirs.append(sdk_ttft(emu, 20) * 1000)
        a, b = summary(ours), summary(theirs)
        out = {"pipeline_ms": a, "sdk_ms": b, "ratio_p50": a["p50"] / b["p50"], "emulator_ttft_s": 0.2,
               "samples": {"pipeline_ms": capped(ours), "sdk_ms": capped(theirs)}}
        print(f"TTFT: whole pipeline p50 {a['p50']:.0f} ms p99 {a['p99']:.0f} ms | official SDK job.stream() "
              f"p50 {b['p50']:.0f} ms p99 {b['p99']:.0f} ms | ratio {out['ratio_p50']:.2f} (target <= 0.3)")
        return out
    finally:
        stack.close()
        emu.close()


def bench_calls(trials: int = 5, seconds: float = 10.0) -> dict[str, Any]:
    tokens_per_s = 20
    results: dict[str, Any] = {}
    for label, flags, env in (
        ("long-poll", [], {}),
        ("long-poll, RUNPOD_STREAM_INTERVAL_S=2.5", [], {"RUNPOD_STREAM_INTERVAL_S": "2.5"}),
        ("no long-poll (adaptive polling)", ["--no-stream-wait"], {}),
    ):
        emu = EmulatorProcess("--cold-start", "0.5", "--idle-timeout", "5", "--ttft", "0.2", "--tokens-per-s",
                              str(tokens_per_s), *flags)
        stack = Stack({**pipeline_env(emu), **env})
        try:
            calls, durations = [], []
            for _ in range(trials):
                t0 = time.perf_counter()
                _, reply = pipeline_ttft(stack, int(seconds * tokens_per_s))
                durations.append(time.perf_counter() - t0)
                calls.append(reply.get("usage") and _api_calls(stack, reply["id"]))
            results[label] = {"api_calls": summary([float(c) for c in calls]), "reply_s": summary(durations)}
            print(f"API calls per completed {seconds:.0f} s job ({label}): median {sorted(calls)[len(calls) // 2]} "
                  f"(all: {calls}); reply took {summary(durations)['p50']:.1f} s")
        finally:
            stack.close()
            emu.close()
    return results


def _api_calls(stack: Stack, mid: str) -> int:
    meta = json.loads(stack.redis.hget(f"chatapp:msg:{mid}", "meta") or "{}")
    return int(meta.get("api_calls", -1))


def bench_capacity(jobs: int = 200, tokens: int = 50, tokens_per_s: float = 50.0, ttft: float = 0.2) -> dict[str, Any]:
    """200 jobs at once through the runpod provider (what a worker does), each in its own thread."""
    from chatapp.models import ChatRequest, GenerationContext, Message
    from plugins.runpod import register_providers

    emu = EmulatorProcess("--cold-start", "0", "--idle-timeout", "5", "--ttft", str(ttft), "--tokens-per-s",
                          str(tokens_per_s), "--max-workers", str(jobs))
    try:
        provider = register_providers({"RUNPOD_API_KEY": KEY, "RUNPOD_ENDPOINT_ID": EP,
                                       "RUNPOD_BASE_URL": emu.base_url, "RUNPOD_GPU": "L4"})[0]
        ideal = ttft + tokens / tokens_per_s
        totals: list[float] = []
        firsts: list[float] = []
        start = threading.Barrier(jobs + 1)

        def one(i: int) -> None:
            request = ChatRequest(message_id=f"m{i}", conversation_id="c", user_id="u", provider="runpod", model=EP,
                                  messages=[Message("user", f"question {i}")], params={"max_tokens": tokens})
            start.wait()
            t0 = time.perf_counter()
            first = None
            for chunk in provider.stream(request, GenerationContext(message_id=f"m{i}")):
                if chunk.text and first is None:
                    first = time.perf_counter() - t0
            totals.append(time.perf_counter() - t0)
            firsts.append(first or float("nan"))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(jobs)]
        for t in threads:
            t.start()
        start.wait()
        wall0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - wall0
        total, first = summary(totals), summary(firsts)
        out = {"jobs": jobs, "ideal_job_s": ideal, "job_s": total, "first_token_s": first, "wall_s": wall,
               "overhead_p50": total["p50"] / ideal, "overhead_p99": total["p99"] / ideal}
        print(f"emulator capacity: {jobs} concurrent streaming jobs, each ideally {ideal:.2f} s: took p50 "
              f"{total['p50']:.2f} s p99 {total['p99']:.2f} s ({out['overhead_p50']:.2f}x / {out['overhead_p99']:.2f}x "
              f"ideal); first token p50 {first['p50']:.2f} s (configured {ttft:.2f}); wall {wall:.1f} s")
        return out
    finally:
        emu.close()


def main() -> None:
    run_cli("runpod", __doc__ or "", {"ttft": bench_ttft, "calls": bench_calls, "capacity": bench_capacity})


if __name__ == "__main__":
    main()
