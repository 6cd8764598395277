"""Issue 7 benchmarks of the pipeline itself, each against a baseline measured in the same run.

    python -m bench.pipeline throughput   # short turns/s through the pipeline vs bare RQ no-op jobs/s
                                          # (and vs replies that do only a reply job's fixed part);
                                          # BENCH_ROUNDS=8 for a steadier ratio (default 3)
    python -m bench.pipeline history      # listing latency: 100 vs 100,000 stored conversations
    python -m bench.pipeline memory       # Redis bytes per stored message and per streamed token
    python -m bench.pipeline all
"""
from __future__ import annotations

import concurrent.futures
import os
import subprocess
import time
from typing import Any

import redis
import requests
from rq import Queue
from rq.suspension import resume, suspend

from bench.harness import BIN, ROOT, Stack, capped, run_cli, summary
from workers import rides
from workers.pool import SUSPENSION_CHECK_EVERY_S

#: an instant provider, no cache: what is measured is the pipeline, not generation
INSTANT = {"CHATAPP_DEFAULT_PROVIDER": "echo", "CHATAPP_BUNDLED_EMULATOR": "false", "CHATAPP_CACHE_ENABLED": "false"}


def noop() -> None:
    """The bare-RQ baseline's job: nothing at all."""


def enqueue_noops(raw: redis.Redis, n: int) -> None:
    """Queue ``n`` baseline no-op jobs on queue ``chat`` in one round trip."""
    queue = Queue("chat", connection=raw)
    with raw.pipeline() as pipe:
        queue.enqueue_many([Queue.prepare_data("bench.pipeline.noop", result_ttl=600) for _ in range(n)], pipeline=pipe)
        pipe.execute()


@rides.rides_on_rq
def fixed_part_of_a_reply(message_id: str) -> str:
    """A second baseline: what the design asks of every reply job whatever it generates, and
    nothing more. The fenced claim (it reads what the request renders from), the lease keeper
    tracking the run, a fenced finish with one event (claim and finish riding on RQ's round trips,
    as a reply's do), and the finisher's after_generation once per reply (handed a request without
    history, so it renders none). No prompt render, no provider call, no pricing, no log line."""
    from chatapp.models import DONE, ChatRequest, GenerationContext, GenerationResult
    from workers import runtime
    from workers.finisher import RENDERED

    ext, keeper, _writer = runtime.get()
    ride = rides.for_run(message_id)
    claim = ride.claim()
    if claim.status != "ok" or claim.source is None:
        return claim.status
    record = claim.source.record
    request = ChatRequest(message_id=message_id, conversation_id=record["conversation_id"], user_id=record["user_id"],
                          provider=record["provider"], model=record["model"], messages=[], params={})
    RENDERED.put(message_id, request)
    keeper.track(message_id, ride.token, GenerationContext(message_id), ext.catalog.provider(request.provider))
    keeper.untrack(message_id, ride.token)
    result = GenerationResult(message_id, DONE, "ok", provider=request.provider, model=request.model,
                              finish_reason="stop", attempt=claim.attempt)
    ride.finish(result, [("delta", {"text": "ok"}, "ok")], lambda finished: None)
    return DONE


#: what ``swap_reply_jobs`` is given to time the fixed part of a reply
FIXED_PART = "bench.pipeline.fixed_part_of_a_reply"


def _wait_until(check: Any, timeout: float) -> float:
    """Poll ``check`` until true; returns the time it became true (monotonic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.02)
    raise TimeoutError("benchmark did not finish in time")


def _per_item(stack: Stack, before: dict[str, float], count: int) -> dict[str, float]:
    """What each item cost since ``before``: CPU ms per process and Redis commands."""
    after = stack.usage()
    out = {k.replace("_cpu_s", "_cpu_ms"): round((after[k] - before[k]) * 1000 / count, 3)
           for k in after if k.endswith("_cpu_s")}
    out["redis_commands"] = round((after["redis_commands"] - before["redis_commands"]) / count, 1)
    return out


def _bare_rq_rate(stack: Stack, n: int, backlog: bool = False, costs: list | None = None) -> float:
    """No-op jobs/s on the same worker process and queue the replies use (enqueued in bulk).
    ``backlog``: enqueued while the worker is suspended, timed from when it starts taking them
    (and what each job cost is appended to ``costs``)."""
    raw = redis.Redis.from_url(stack.redis_url)  # RQ stores pickles: no decode_responses
    queue = Queue("chat", connection=raw)
    registry = queue.finished_job_registry
    before = registry.count
    if backlog:
        _suspend(raw)
    t0 = time.monotonic()
    enqueue_noops(raw, n)
    counted = n
    if backlog:
        used = stack.usage()
        t0, counted = _resume_and_time_start(raw, queue.key)
    done = _wait_until(lambda: registry.count - before >= n, 120)
    if backlog and costs is not None:
        costs.append(_per_item(stack, used, counted))
    return counted / (done - t0)


def _suspend(raw: redis.Redis) -> None:
    """``rq suspend``, and wait until the worker will have noticed it by its next job (it asks
    at most every ``SUSPENSION_CHECK_EVERY_S``)."""
    suspend(raw)
    time.sleep(SUSPENSION_CHECK_EVERY_S + 0.1)


def _resume_and_time_start(raw: redis.Redis, queue_key: str) -> tuple[float, int]:
    """Resume the suspended worker; returns when it took the first waiting job, and how many were
    waiting. (A worker already blocked in its dequeue when suspended takes one job before it
    notices: that one is not counted.)"""
    waiting = raw.llen(queue_key)
    resume(raw)
    deadline = time.monotonic() + 30
    while raw.llen(queue_key) >= waiting:
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not resume")
        time.sleep(0.001)
    return time.monotonic(), waiting


def _send_turns(stack: Stack, n: int, clients: int) -> list[str]:
    """``n`` sends from ``clients`` concurrent REST clients, each into its own conversation;
    returns the reply ids."""
    headers = {"Authorization": f"Bearer {stack.key}"}
    session = requests.Session()
    convs = [session.post(f"{stack.url}/api/v1/conversations", json={}, headers=headers, timeout=10).json()["id"]
             for _ in range(clients)]
    per_client = n // clients

    def drive(cid: str) -> list[str]:
        s = requests.Session()
        mids = []
        for i in range(per_client):
            r = s.post(f"{stack.url}/api/v1/conversations/{cid}/messages", json={"content": f"turn {i}"},
                       headers=headers, timeout=30)
            assert r.status_code == 202, r.text
            mids.append(r.json()["message_id"])
        return mids

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return [m for batch in pool.map(drive, convs) for m in batch]


def _all_finished(stack: Stack, mids: list[str]) -> Any:
    """A check that every reply is ``done`` and its ``after_generation`` has run (the outbox is
    empty): a reply counts once all of its work is over, not when its text is."""
    pending = list(mids)  # in send order, which is about the order they finish in

    def check() -> bool:
        # only the oldest replies not seen done yet: the bench's own polling stays a small load
        while pending:
            ids = pending[:50]
            with stack.redis.pipeline(transaction=False) as pipe:
                for mid in ids:
                    pipe.hget(f"chatapp:msg:{mid}", "state")
                done = {mid for mid, state in zip(ids, pipe.execute()) if state == "done"}
            pending[:50] = [mid for mid in ids if mid not in done]
            if len(done) < len(ids):  # some of the oldest are still running
                return False
        return stack.redis.xlen("chatapp:finished") == 0

    return check


def _pipeline_rate(stack: Stack, n: int, clients: int, backlog: bool = False, costs: list | None = None,
                   job_function: str | None = None) -> float:
    """Short turns/s: ``n`` sends from ``clients`` concurrent REST clients, until every reply is
    done. ``backlog``: sent while the worker is suspended, timed from when it starts on them;
    ``job_function`` (backlog only): the queued reply jobs run that instead (``swap_reply_jobs``)."""
    raw = redis.Redis.from_url(stack.redis_url)
    if backlog:
        _suspend(raw)
    t0 = time.monotonic()
    mids = _send_turns(stack, n, clients)
    counted = len(mids)
    if backlog:
        if job_function:
            swap_reply_jobs(raw, job_function)
        used = stack.usage()
        t0, counted = _resume_and_time_start(raw, "rq:queue:chat")
    done = _wait_until(_all_finished(stack, mids), 300)
    if backlog and costs is not None:
        costs.append(_per_item(stack, used, counted))
    return counted / (done - t0)


def swap_reply_jobs(raw: redis.Redis, function: str) -> None:
    """Make every reply job waiting on queue ``chat`` run ``function(message_id)`` instead (same
    job ids, so the replies' records still name their jobs)."""
    queue = Queue("chat", connection=raw)
    job_ids = [j.decode() for j in raw.lrange(queue.key, 0, -1)]
    with raw.pipeline() as pipe:
        pipe.delete(queue.key)
        queue.enqueue_many([Queue.prepare_data(function, args=(j.removeprefix("reply-"),), job_id=j, result_ttl=600,
                                               timeout=600) for j in job_ids], pipeline=pipe)
        pipe.execute()


def bench_throughput(n: int = 600, clients: int = 20, rounds: int | None = None) -> dict[str, Any]:
    """Short turns/s against bare RQ jobs/s, in ``rounds`` interleaved rounds (``BENCH_ROUNDS``,
    default 3; a single run's ratio moves by about ±0.1 on a shared 2-core machine, 8 rounds
    by about ±0.03)."""
    rounds = rounds or int(os.environ.get("BENCH_ROUNDS", "3"))
    stack = Stack(INSTANT, worker_concurrency=32)
    try:
        _pipeline_rate(stack, clients * 2, clients)  # warm up both sides
        _bare_rq_rate(stack, 50)
        out: dict[str, Any] = {"n": n, "clients": clients, "worker_concurrency": 32}
        for mode, backlog in (("worker", True), ("end_to_end", False)):
            pipe_rates, rq_rates, fixed_rates, pipe_costs, rq_costs, fixed_costs = [], [], [], [], [], []
            for _ in range(rounds):  # interleaved, so all see the same machine
                rq_rates.append(_bare_rq_rate(stack, n, backlog, rq_costs))
                if backlog:
                    fixed_rates.append(_pipeline_rate(stack, n, clients, True, fixed_costs, FIXED_PART))
                pipe_rates.append(_pipeline_rate(stack, n, clients, backlog, pipe_costs))
            ratio = summary(pipe_rates)["p50"] / summary(rq_rates)["p50"]
            # each round's reply rate over the bare rate measured just before it: less swayed by
            # the machine's speed drifting between rounds
            round_ratio = summary([p / b for p, b in zip(pipe_rates, rq_rates)])["p50"]
            print(f"{mode:>10}: bare RQ no-op jobs/s {[round(r) for r in rq_rates]}  pipeline replies/s "
                  f"{[round(r) for r in pipe_rates]}  median ratio {ratio:.2f}, median of round ratios "
                  f"{round_ratio:.2f}" + (" (target >= 0.8)" if mode == "worker" else ""))
            out[mode] = {"bare_rq_jobs_per_s": summary(rq_rates), "pipeline_replies_per_s": summary(pipe_rates),
                         "ratio": ratio, "median_round_ratio": round_ratio, "rounds": rounds}
            if backlog:  # per item, while the worker drained: the web is idle then
                fixed_ratio = summary(fixed_rates)["p50"] / summary(rq_rates)["p50"]
                print(f"{'':>10}  fixed part of a reply only: {[round(r) for r in fixed_rates]} replies/s, "
                      f"median ratio {fixed_ratio:.2f} (the most any reply could reach)")
                out[mode].update(fixed_part_replies_per_s=summary(fixed_rates), fixed_part_ratio=fixed_ratio)
                cost = {side: {k: summary([c[k] for c in costs])["p50"] for k in costs[0]}
                        for side, costs in (("bare_rq", rq_costs), ("fixed_part", fixed_costs), ("pipeline", pipe_costs))}
                cost["worker_cpu_ratio"] = cost["bare_rq"]["worker_cpu_ms"] / cost["pipeline"]["worker_cpu_ms"]
                out[mode]["per_item_median"] = cost
                print(f"{'':>10}  per item (median): worker CPU {cost['bare_rq']['worker_cpu_ms']:.2f} ms (bare) / "
                      f"{cost['fixed_part']['worker_cpu_ms']:.2f} ms (fixed part) / "
                      f"{cost['pipeline']['worker_cpu_ms']:.2f} ms (reply), ratio {cost['worker_cpu_ratio']:.2f}; "
                      f"Redis commands {cost['bare_rq']['redis_commands']:.0f} / {cost['fixed_part']['redis_commands']:.0f}"
                      f" / {cost['pipeline']['redis_commands']:.0f}")
                threads = [k for k in cost["bare_rq"] if k.startswith("worker_") and k != "worker_cpu_ms"]
                print(f"{'':>10}  worker CPU by thread, ms per item (bare / fixed part / reply): " + ", ".join(
                    f"{k.removeprefix('worker_').removesuffix('_cpu_ms')} "
                    + " / ".join(f"{cost[side][k]:.2f}" for side in ("bare_rq", "fixed_part", "pipeline"))
                    for k in threads))
        return out
    finally:
        stack.close()


def _fill_conversations(stack: Stack, uid: str, count: int) -> None:
    """Store ``count`` conversations for ``uid`` in the app's own layout (chatapp.store)."""
    now = int(time.time() * 1000)
    with stack.redis.pipeline(transaction=False) as pipe:
        for i in range(count):
            cid = f"c_bench{uid}{i:07d}"
            at = now - i
            pipe.hset(f"chatapp:conv:{cid}", mapping={
                "id": cid, "user_id": uid, "title": f"conversation {i}", "persona": "assistant", "provider": "echo",
                "model": "echo-1", "params": "{}", "created_at": at, "updated_at": at, "message_count": 2,
                "cost_micros": 0, "msg_counter": 2})
            pipe.zadd(f"chatapp:user:{uid}:convs", {cid: at})
            if i % 5000 == 4999:
                pipe.execute()
        pipe.execute()


def _user(stack: Stack, name: str) -> tuple[str, str]:
    """A new user's (API key, id), made with the documented command."""
    out = subprocess.run([os.path.join(BIN, "flask"), "--app", "wsgi", "users", "create", name], cwd=ROOT,
                         env=stack.env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1], stack.redis.hget("chatapp:user_names", name)


def bench_history(n: int = 400) -> dict[str, Any]:
    stack = Stack(INSTANT, start_worker=False)
    try:
        small_key, small_uid = _user(stack, "small")
        big_key, big_uid = _user(stack, "big")
        _fill_conversations(stack, small_uid, 100)
        t0 = time.monotonic()
        _fill_conversations(stack, big_uid, 100_000)
        print(f"stored 100,000 conversations in {time.monotonic() - t0:.1f} s")
        session = requests.Session()

        def timed_page(key: str, cursor: str | None = None) -> tuple[float, dict[str, Any]]:
            url = f"{stack.url}/api/v1/conversations?limit=20" + (f"&cursor={cursor}" if cursor else "")
            t = time.perf_counter()
            r = session.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
            elapsed = (time.perf_counter() - t) * 1000
            assert r.status_code == 200 and len(r.json()["items"]) == 20, r.text
            return elapsed, r.json()

        # a cursor a few pages into the big history
        _, page = timed_page(big_key)
        for _ in range(3):
            _, page = timed_page(big_key, page["next_cursor"])
        deep = page["next_cursor"]
        for _ in range(30):  # warm-up
            timed_page(small_key), timed_page(big_key)
        small, big, big_deep = [], [], []
        for _ in range(n):  # interleaved
            small.append(timed_page(small_key)[0])
            big.append(timed_page(big_key)[0])
            big_deep.append(timed_page(big_key, deep)[0])
        out = {"100_first_page_ms": summary(small), "100k_first_page_ms": summary(big),
               "100k_later_page_ms": summary(big_deep)}
        out["ratio_p50"] = out["100k_first_page_ms"]["p50"] / out["100_first_page_ms"]["p50"]
        out["ratio_later_page_p50"] = out["100k_later_page_ms"]["p50"] / out["100_first_page_ms"]["p50"]
        for name in ("100_first_page_ms", "100k_first_page_ms", "100k_later_page_ms"):
            print(f"{name:>20}: p50 {out[name]['p50']:.2f} ms  p99 {out[name]['p99']:.2f} ms")
        print(f"ratio 100k/100 (p50): first page {out['ratio_p50']:.2f}, later page {out['ratio_later_page_p50']:.2f}"
              " (target <= 1.5)")
        out["samples"] = {"100_first_page_ms": capped(small), "100k_first_page_ms": capped(big),
                          "100k_later_page_ms": capped(big_deep)}
        return out
    finally:
        stack.close()


def bench_memory(n: int = 300) -> dict[str, Any]:
    stack = Stack(INSTANT, worker_concurrency=32)
    try:
        headers = {"Authorization": f"Bearer {stack.key}"}
        session = requests.Session()
        cid = session.post(f"{stack.url}/api/v1/conversations", json={}, headers=headers, timeout=10).json()["id"]
        session.post(f"{stack.url}/api/v1/conversations/{cid}/messages?wait=true", json={"content": "warm up"},
                     headers=headers, timeout=30)
        time.sleep(1)
        before = stack.redis.info("memory")["used_memory"]
        text = " ".join(f"word{i}" for i in range(40))  # echo answers with the same 40 words + a prefix
        mids = []
        for _ in range(n):
            r = session.post(f"{stack.url}/api/v1/conversations/{cid}/messages?wait=true", json={"content": text},
                             headers=headers, timeout=30)
            mids.append(r.json()["message_id"])
        time.sleep(1)
        after = stack.redis.info("memory")["used_memory"]
        tokens = sum(int(stack.redis.hget(f"chatapp:msg:{m}", "seq") or 0) for m in mids)
        streams = sum(stack.redis.memory_usage(f"chatapp:ev:{m}", samples=0) or 0 for m in mids)
        users = [stack.redis.hget(f"chatapp:msg:{m}", "reply_to") for m in mids]
        message_keys = [f"chatapp:msg:{m}" for m in [*mids, *(u for u in users if u)]]
        messages = sum((stack.redis.memory_usage(key, samples=0) or 0) for key in message_keys)
        listpack = _bytes_as_listpacks(stack.redis, message_keys)
        guards = [f"chatapp:{kind}:{m}" for m in mids for kind in ("usage:seen", "budget:settled")]
        guard_bytes = sum(stack.redis.memory_usage(k) or 0 for k in guards)
        out = {"turns": n, "used_memory_delta_bytes": after - before,
               "guard_bytes_per_reply": guard_bytes / n,
               "bytes_per_turn_total": (after - before) / n,
               "bytes_per_stored_message": messages / (2 * n),
               "bytes_per_stored_message_listpack_1024": listpack / (2 * n),
               "events_per_reply": tokens / n,
               "bytes_per_streamed_event": streams / max(tokens, 1),
               "note": "events kept STREAM_TTL_S (default 1 day) after a reply ends; echo sends one event a word"}
        print(f"per stored message {out['bytes_per_stored_message']:.0f} B; per streamed event (token) "
              f"{out['bytes_per_streamed_event']:.0f} B while its stream lives; whole turn "
              f"{out['bytes_per_turn_total']:.0f} B (incl. firehose, outbox, usage log); the reply's guard keys "
              f"(usage, budget; kept a week) {out['guard_bytes_per_reply']:.0f} B")
        print(f"per stored message with hash-max-listpack-value 1024: "
              f"{out['bytes_per_stored_message_listpack_1024']:.0f} B (Redis's default, 64, makes any hash with a "
              f"longer value, such as the content, a hash table)")
        return out
    finally:
        stack.close()


def _bytes_as_listpacks(client: redis.Redis, keys: list[str]) -> int:
    """What ``keys`` (hashes) would take with ``hash-max-listpack-value 1024``: each is copied to
    a scratch key under that setting and measured. Only for the bench's own redis-server."""
    old = client.config_get("hash-max-listpack-value")["hash-max-listpack-value"]
    client.config_set("hash-max-listpack-value", 1024)
    try:
        total = 0
        for key in keys:
            client.hset("bench:listpack", mapping=client.hgetall(key))
            total += client.memory_usage("bench:listpack", samples=0) or 0
            client.delete("bench:listpack")
        return total
    finally:
        client.config_set("hash-max-listpack-value", old)


if __name__ == "__main__":
    run_cli("pipeline", __doc__ or "", {"throughput": bench_throughput, "history": bench_history,
                                        "memory": bench_memory})
