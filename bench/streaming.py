"""Streaming benchmarks for issue 2, against the Procfile's real processes on loopback.

    python -m bench.streaming latency      # added latency per chunk at 1 and 100 streams, vs a bare Redis hop
    python -m bench.streaming connections  # Redis connections held by one web process with 500 sockets
    python -m bench.streaming capacity     # concurrent generations one worker process carries
    python -m bench.streaming all          # everything; writes bench/results/streaming.json

Each figure is measured next to its baseline in the same run. Needs redis-server on PATH and the
``websockets`` package (``pip install -e '.[bench]'``).
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import redis
from websockets.asyncio.client import connect

from bench.harness import Stack, capped, run_cli, summary

TIMED = {"CHATAPP_PLUGINS": "bench.timed_provider", "CHATAPP_DEFAULT_PROVIDER": "timed"}


async def stream_one(ws_url: str, key: str, chunks: int, latencies: list[float], start: asyncio.Event | None = None,
                     states: list[str] | None = None) -> str:
    """Send one message and read its reply; record now - emit time for every delta."""
    async with connect(ws_url, additional_headers={"Authorization": f"Bearer {key}"}, max_queue=None,
                       open_timeout=60) as ws:
        if start is not None:
            await start.wait()
        # cache skip: every send asks the same question, and a cache hit would replay an earlier
        # reply's emit times instead of streaming (as bench.runpod does)
        await ws.send(json.dumps({"type": "send", "conversation_id": None, "content": "bench",
                                  "params": {"max_tokens": chunks, "cache": "skip"}}))
        mid = None
        while True:
            frame = json.loads(await ws.recv())
            now = time.time()
            if frame["type"] == "accepted":
                mid = frame["message_id"]
                if states is not None:
                    states.append(mid)
            elif frame["type"] == "delta":
                for stamp in frame["text"].split(";"):
                    if stamp:
                        latencies.append((now - float(stamp)) * 1000)
            elif frame["type"] in ("done", "error") and frame.get("message_id") == mid:
                return frame["type"]


def redis_hop_baseline(redis_url: str, streams: int, chunks: int, interval: float) -> list[float]:
    """The floor: producers XADD a timestamp, one consumer XREAD BLOCKs on all streams."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = [f"bench:baseline:{time.monotonic_ns()}:{i}" for i in range(streams)]
    latencies: list[float] = []
    done = threading.Event()

    def consume() -> None:
        c = redis.Redis.from_url(redis_url, decode_responses=True)
        last = {k: "0-0" for k in keys}
        seen = 0
        while seen < streams * chunks:
            for key, entries in c.xread(last, block=1000) or []:
                now = time.time()
                for entry_id, fields in entries:
                    last[key] = entry_id
                    latencies.append((now - float(fields["t"])) * 1000)
                    seen += 1
        done.set()

    def produce() -> None:
        # one producer thread, spreading the same event rate over all streams (100 Python threads
        # would measure the GIL, not Redis)
        p = redis.Redis.from_url(redis_url, decode_responses=True)
        for _ in range(chunks):
            for key in keys:
                time.sleep(interval / streams)
                p.xadd(key, {"t": f"{time.time():.6f}"})

    threading.Thread(target=consume, daemon=True).start()
    producer = threading.Thread(target=produce)
    producer.start()
    producer.join()
    done.wait(30)
    r.delete(*keys)
    return latencies


def bench_latency(levels: tuple[int, ...] = (1, 100), chunks: int = 50, interval: float = 0.05) -> dict[str, Any]:
    stack = Stack({**TIMED, "CHATAPP_TIMED_INTERVAL_S": str(interval)}, worker_concurrency=max(levels))
    try:
        out: dict[str, Any] = {}
        for n in levels:
            latencies: list[float] = []

            async def run() -> list[str]:
                start = asyncio.Event()
                tasks = [asyncio.create_task(stream_one(stack.ws_url, stack.key, chunks, latencies, start))
                         for _ in range(n)]
                await asyncio.sleep(0.5)
                start.set()
                return await asyncio.gather(*tasks)

            results = asyncio.run(run())
            base = redis_hop_baseline(stack.redis_url, n, chunks, interval)
            pipeline, floor = summary(latencies), summary(base)
            out[f"streams_{n}"] = {"pipeline_ms": pipeline, "redis_hop_ms": floor,
                                   "ratio_p50": pipeline["p50"] / floor["p50"] if floor["p50"] else None,
                                   "replies_done": results.count("done"), "replies": n,
                                   "samples": {"pipeline_ms": capped(latencies), "redis_hop_ms": capped(base)}}
            print(f"latency @ {n:>3} streams: pipeline p50 {pipeline['p50']:.2f} ms p99 {pipeline['p99']:.2f} ms "
                  f"| bare Redis hop p50 {floor['p50']:.2f} ms p99 {floor['p99']:.2f} ms "
                  f"| {results.count('done')}/{n} replies done")
        return out
    finally:
        stack.close()


def bench_connections(sockets: int = 500, replies: int = 50, chunks: int = 100, interval: float = 0.05) -> dict[str, Any]:
    stack = Stack({**TIMED, "CHATAPP_TIMED_INTERVAL_S": str(interval)}, web_workers=1, worker_concurrency=replies)
    try:
        web_pid = stack.web_pids()[0]
        samples: list[int] = []
        followers_ok: list[bool] = []

        async def follower(mid_box: list[str], i: int) -> None:
            async with connect(stack.ws_url, additional_headers={"Authorization": f"Bearer {stack.key}"},
                               open_timeout=60, max_queue=None) as ws:
                while not mid_box:
                    await asyncio.sleep(0.05)
                await ws.send(json.dumps({"type": "subscribe", "message_id": mid_box[i % len(mid_box)],
                                          "after_seq": 0}))
                while True:
                    frame = json.loads(await ws.recv())
                    if frame["type"] in ("done", "error"):
                        followers_ok.append(frame["type"] == "done")
                        return

        async def sampler(stop: asyncio.Event) -> None:
            while not stop.is_set():
                samples.append(await asyncio.to_thread(stack.redis_connections, web_pid))
                await asyncio.sleep(0.25)

        async def run() -> None:
            mids: list[str] = []
            stop = asyncio.Event()
            sample_task = asyncio.create_task(sampler(stop))
            senders = [asyncio.create_task(stream_one(stack.ws_url, stack.key, chunks, [], None, mids))
                       for _ in range(replies)]
            while len(mids) < replies:
                await asyncio.sleep(0.05)
            followers = [asyncio.create_task(follower(mids, i)) for i in range(sockets - replies)]
            await asyncio.gather(*senders, *followers)
            stop.set()
            await sample_task

        asyncio.run(run())
        result = {"sockets": sockets, "replies": replies, "max_redis_connections": max(samples),
                  "median_redis_connections": sorted(samples)[len(samples) // 2], "samples": len(samples),
                  "followers_done": sum(followers_ok), "web_rss_mb": stack.rss_mb(web_pid)}
        print(f"connections: {sockets} sockets following {replies} live replies -> web process held at most "
              f"{result['max_redis_connections']} Redis connections (median {result['median_redis_connections']}); "
              f"{result['followers_done']}/{sockets - replies} followers got done; web RSS {result['web_rss_mb']:.0f} MB")
        return result
    finally:
        stack.close()


def bench_capacity(levels: tuple[int, ...] = (100, 200), chunks: int = 100, interval: float = 0.05) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in levels:
        stack = Stack({**TIMED, "CHATAPP_TIMED_INTERVAL_S": str(interval)}, worker_concurrency=n)
        try:
            latencies: list[float] = []
            mids: list[str] = []
            peak = {"generating": 0, "rss": 0.0}
            stop = threading.Event()

            def watch() -> None:
                r = redis.Redis.from_url(stack.redis_url, decode_responses=True)
                while not stop.is_set():
                    if mids:
                        with r.pipeline(transaction=False) as pipe:
                            for mid in list(mids):
                                pipe.hget(f"chatapp:msg:{mid}", "state")
                            states = pipe.execute()
                        peak["generating"] = max(peak["generating"], states.count("generating"))
                    peak["rss"] = max(peak["rss"], stack.rss_mb(stack.worker.pid))
                    time.sleep(0.2)

            async def run() -> list[str]:
                start = asyncio.Event()
                tasks = [asyncio.create_task(stream_one(stack.ws_url, stack.key, chunks, latencies, start, mids))
                         for _ in range(n)]
                await asyncio.sleep(1.0)
                start.set()
                return await asyncio.gather(*tasks)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            t0 = time.time()
            results = asyncio.run(run())
            wall = time.time() - t0 - 1.0
            stop.set()
            watcher.join()
            lat = summary(latencies)
            out[f"generations_{n}"] = {"peak_concurrent_generating": peak["generating"], "worker_rss_mb": peak["rss"],
                                       "wall_s": wall, "ideal_s": chunks * interval, "chunk_latency_ms": lat,
                                       "replies_done": results.count("done"),
                                       "samples": {"chunk_latency_ms": capped(latencies)}}
            print(f"capacity @ {n:>3}: peak {peak['generating']} generating at once in one worker process, "
                  f"{results.count('done')}/{n} done in {wall:.1f} s (one reply alone: {chunks * interval:.1f} s), "
                  f"chunk latency p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms, worker RSS {peak['rss']:.0f} MB")
        finally:
            stack.close()
    return out


def main() -> None:
    run_cli("streaming", __doc__ or "", {"latency": bench_latency, "connections": bench_connections, "capacity": bench_capacity})


if __name__ == "__main__":
    main()
