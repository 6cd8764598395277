"""Instructions the worker executes per item, counted by valgrind rather than timed.

    python -m bench.instructions all      # ~5-8 min; needs valgrind on PATH

On a shared two-core machine the throughput benchmark's rates move by 10 % or more between
runs. Callgrind counts the instructions a process executes instead. ``python -m workers
--burst`` drains a backlog of K queued items under callgrind, once with K = 100 and once with
K = 300; the difference over 200 is what one item costs, with start-up and shut-down cancelled
out. The items are those of ``bench.pipeline throughput``'s worker stage: a no-op RQ job, a
reply whose job does only the fixed part of a reply (``bench.pipeline.fixed_part_of_a_reply``),
and a short reply, sent into 20 conversations as there. Leases and the queue grace are stretched
to 10 minutes: under callgrind the worker runs about 50 times slower, and with production leases
the reaper would take its replies for lost and run them again.

How far to trust it: a no-op job's count repeats to 0.2 %; a reply's moved by about 10 %
between runs, because how many replies share a finisher batch (and an event-writer round trip)
depends on timing, and under callgrind that timing is not the production one.
"""
from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import redis

from bench.harness import ROOT, Stack, free_port, run_cli
from bench.pipeline import FIXED_PART, INSTANT, enqueue_noops, swap_reply_jobs

SMALL, LARGE = 100, 300
KINDS = ("bare", "fixed_part", "reply")
#: no lease lapses and no queue checks while callgrind slows the worker down
SLOW = {"CHATAPP_LEASE_TTL_S": "600", "CHATAPP_LEASE_RENEW_S": "200", "CHATAPP_QUEUE_GRACE_S": "600",
        "CHATAPP_MAX_ACTIVE_GENERATIONS": "0", "CHATAPP_RATE_LIMIT_SENDS_PER_MINUTE": "0"}


def _fill(kind: str, k: int, url: str) -> None:
    """Queue ``k`` items of ``kind`` in the Redis at ``url``."""
    raw = redis.Redis.from_url(url)
    if kind == "bare":
        enqueue_noops(raw, k)
        return
    from chatapp.app import create_app

    app = create_app({"REDIS_URL": url, "DEFAULT_PROVIDER": "echo", "BUNDLED_EMULATOR": False, "CACHE_ENABLED": False,
                      "MAX_ACTIVE_GENERATIONS": 0, "RATE_LIMIT_SENDS_PER_MINUTE": 0})
    ext = app.extensions["chatapp"]
    user, _key = ext.users.create("bench")
    conversations = [ext.chat.send(user, conversation_id=None, content="hello").conversation_id for _ in range(20)]
    raw.delete("rq:queue:chat")  # the openers' replies are not measured
    for i in range(k):
        ext.chat.send(user, conversation_id=conversations[i % 20], content=f"turn {i}")
    if kind == "fixed_part":
        swap_reply_jobs(raw, FIXED_PART)
    ext.clients.close()
    ext.relay.stop()


def _count(kind: str, k: int) -> dict[str, Any]:
    """Instructions of a burst worker that drains ``k`` queued items of ``kind``."""
    work = tempfile.mkdtemp(prefix="chatapp-instructions-")
    port = free_port()
    server = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                               "127.0.0.1", "--dir", work, "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        Stack._wait(client.ping, timeout=10)
        _fill(kind, k, url)
        env = {key: value for key, value in os.environ.items() if not key.startswith(("CHATAPP_", "RUNPOD_", "OPENAI_"))}
        env.update(INSTANT, **SLOW, REDIS_URL=url)
        out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m",
                              "workers", "--burst", "--concurrency", "32"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=1200)
        found = re.search(r"Collected : ([\d,]+)", out.stderr)
        if not found:
            raise RuntimeError(f"valgrind printed no count:\n{out.stderr[-2000:]}")
        return {"kind": kind, "k": k, "instructions": int(found.group(1).replace(",", "")),
                "outbox_left": client.xlen("chatapp:finished")}
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def bench_instructions() -> dict[str, Any]:
    if not shutil.which("valgrind"):
        raise SystemExit("bench.instructions needs valgrind on PATH (Debian: apt-get install valgrind)")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # the two sizes of a kind side by side
        runs = list(pool.map(lambda args: _count(*args), [(kind, k) for kind in KINDS for k in (SMALL, LARGE)]))
    per_item = {}
    for kind in KINDS:
        small, large = (next(r for r in runs if r["kind"] == kind and r["k"] == k) for k in (SMALL, LARGE))
        per_item[kind] = (large["instructions"] - small["instructions"]) / (LARGE - SMALL)
    out: dict[str, Any] = {"runs": runs, "instructions_per_item": per_item,
                           "ratio_reply": per_item["bare"] / per_item["reply"],
                           "ratio_fixed_part": per_item["bare"] / per_item["fixed_part"]}
    print("instructions per item: " + ", ".join(f"{kind} {per_item[kind] / 1e6:.2f} M" for kind in KINDS))
    print(f"bare / reply {out['ratio_reply']:.2f} (the throughput target is >= 0.8), "
          f"bare / fixed part {out['ratio_fixed_part']:.2f}")
    left = [r for r in runs if r["outbox_left"]]
    if left:
        print("(burst workers stopped with " + ", ".join(f"{r['outbox_left']} of {r['kind']} {r['k']}" for r in left)
              + " after_generation entries unhandled: a fraction of one item's cost)")
    return out


if __name__ == "__main__":
    run_cli("instructions", __doc__ or "", {"instructions": bench_instructions})
