"""Benchmarks for issue 4 (cache and budgets), against the Procfile's real processes.

    python -m bench.features cache    # cache hits over REST ?wait=true and the websocket, no worker running
    python -m bench.features budget   # what the budget reservation adds to a send
    python -m bench.features all
"""
from __future__ import annotations

import json
import time
from typing import Any

import requests
import websocket

from bench.harness import Stack, capped, run_cli, summary

ECHO = {"CHATAPP_DEFAULT_PROVIDER": "echo", "CHATAPP_BUNDLED_EMULATOR": "false"}


def timed(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def bench_cache(n: int = 300) -> dict[str, Any]:
    stack = Stack(ECHO)
    try:
        session = requests.Session()
        headers = {"Authorization": f"Bearer {stack.key}"}
        question = {"message": "What are your opening hours?"}
        assert session.post(f"{stack.url}/api/v1/chat", json=question, headers=headers, timeout=30).json()["cached"] is False
        time.sleep(1.0)  # the worker's outbox stores the entry
        stack.worker.terminate()  # from here on no worker runs: every answer must come from the cache
        stack.worker.wait(15)

        def rest_hit() -> None:
            # a fresh conversation each time, so the prompt (and the key) is the same as the first
            r = session.post(f"{stack.url}/api/v1/chat", json=question, headers=headers, timeout=10)
            assert r.status_code == 200 and r.json()["cached"] is True, r.text

        fresh = iter([session.post(f"{stack.url}/api/v1/conversations", json={}, headers=headers).json()["id"]
                      for _ in range(n // 2)])  # made before timing: a hit needs the same (empty) history

        def rest_wait_hit() -> None:
            c = next(fresh)
            r = session.post(f"{stack.url}/api/v1/conversations/{c}/messages?wait=true",
                             json={"content": question["message"]}, headers=headers, timeout=10)
            assert r.status_code == 200 and r.json()["message"]["cached"] is True, r.text

        ws = websocket.create_connection(stack.ws_url, header=[f"Authorization: Bearer {stack.key}"],
                                         suppress_origin=True, timeout=10)

        def ws_hit() -> None:
            ws.send(json.dumps({"type": "send", "conversation_id": None, "content": question["message"]}))
            while True:
                frame = json.loads(ws.recv())
                if frame["type"] == "done":
                    assert frame["cached"] is True
                    return
                if frame["type"] == "error":
                    raise AssertionError(frame)

        raw = {"healthz_baseline_ms": timed(lambda: session.get(f"{stack.url}/healthz", timeout=5), n)}
        raw["chat_hit_ms"] = timed(rest_hit, n)
        raw["wait_true_hit_ms"] = timed(rest_wait_hit, n // 2)
        raw["websocket_hit_ms"] = timed(ws_hit, n)
        results: dict[str, Any] = {name: summary(values) for name, values in raw.items()}
        ws.close()
        for name, s in results.items():
            print(f"{name:>22}: p50 {s['p50']:.2f} ms  p99 {s['p99']:.2f} ms  (n={s['n']})")
        results["samples"] = {name: capped(values) for name, values in raw.items()}
        print("no worker process was running during the hits")
        return results
    finally:
        stack.close()


def bench_budget(n: int = 300) -> dict[str, Any]:
    stack = Stack(ECHO, start_worker=False)
    try:
        session = requests.Session()
        free = {"Authorization": f"Bearer {stack.key}"}
        import subprocess

        from bench.harness import BIN, ROOT
        out = subprocess.run([f"{BIN}/flask", "--app", "wsgi", "users", "create", "capped", "--admin"], cwd=ROOT,
                             env=stack.env, capture_output=True, text=True, check=True)
        capped_key = out.stdout.strip().splitlines()[-1]
        capped = {"Authorization": f"Bearer {capped_key}"}
        me = stack.redis.get(f"chatapp:apikey:{__import__('hashlib').sha256(capped_key.encode()).hexdigest()}")
        r = session.put(f"{stack.url}/api/v1/admin/budgets/{me}", json={"daily_usd": 1_000_000}, headers=capped)
        assert r.status_code == 200, r.text
        convs = {name: session.post(f"{stack.url}/api/v1/conversations", json={}, headers=h).json()["id"]
                 for name, h in (("free", free), ("capped", capped))}
        samples: dict[str, list[float]] = {"free": [], "capped": []}
        for i in range(n):  # interleaved: drift hits both alike
            for name, h in (("free", free), ("capped", capped)):
                t0 = time.perf_counter()
                r = session.post(f"{stack.url}/api/v1/conversations/{convs[name]}/messages",
                                 json={"content": f"q{i}", "params": {"cache": "skip"}}, headers=h)
                samples[name].append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 202, r.text
        a, b = summary(samples["free"]), summary(samples["capped"])
        out_ = {"send_without_budget_ms": a, "send_with_budget_ms": b, "added_p50_ms": b["p50"] - a["p50"]}
        print(f"send without a budget p50 {a['p50']:.2f} ms p99 {a['p99']:.2f} ms | with a budget p50 {b['p50']:.2f} ms "
              f"p99 {b['p99']:.2f} ms | reservation adds {out_['added_p50_ms']:.2f} ms at p50 (target <= 1 ms)")
        return out_
    finally:
        stack.close()


def main() -> None:
    run_cli("features", __doc__ or "", {"cache": bench_cache, "budget": bench_budget})


if __name__ == "__main__":
    main()
