"""The fault suite (issue 7): kill, cut and break things under the Procfile's real processes and
count what was lost, duplicated or stuck.

    python -m bench.faults                 # the full suite (several minutes)
    python -m bench.faults --smoke         # a short version of every check (about a minute)
    python -m bench.faults --json out.json # also write the results as JSON

One stack for every check, all on loopback: a private redis-server (AOF, fsync every second), the
Procfile's web process (gunicorn + gevent) and ``python -m workers``, plus the RunPod emulator in
this process, reached by the worker through the ``runpod`` provider. Checks:

- worker SIGKILL: three replies in flight, the worker process is killed at a random point of the
  first one and a new one is started; replies lost, duplicated, stuck (not final within 60 s), and
  time from the kill to every interrupted reply being final (the smoke kills only once all three
  are generating, so its outcome does not depend on hitting the dequeue-to-claim window).
  ``python -m workers`` runs RQ's SimpleWorker with a thread pool: there is no separate
  work-horse process, so "parent", "work-horse" and "both" are the same single process.
- websocket cut + resume: the client's socket is cut at a random ``seq``; a new socket sends
  ``subscribe`` with ``after_seq``; gaps and duplicates over both sockets.
- every fault the RunPod emulator can inject, through the ``runpod`` provider: the terminal state
  and code, time to it, emulator HTTP requests made for the reply, RunPod jobs created.
- redis-server restarted (SIGTERM, AOF ``everysec``) under load: accepted sends lost.

Prints a table (check, measured, target, PASS/FAIL) and exits 1 if any target is missed. Every
loop is bounded in count and time; every process started here is stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import requests
import websocket

from bench.harness import Stack, machine, summary
from chatapp.runpod_emulator import FAULTS, EmulatorConfig, EmulatorServer

P = "chatapp:"
EP = "faults-ep"
EMU_KEY = "faults-emulator-key"
ECHO_DELAY_S = 0.03
FINAL_STATES = ("done", "failed", "cancelled")
STUCK_AFTER_S = 60.0
RECOVERY_TARGET_S = 30.0
FAULT_TIME_BOUND_S = 20.0
#: a reply's emulator requests: /run, a handful of /stream long-polls and /status normally; each
#: failing call is retried at most 5 times (plugins.http_retry), so 25 bounds any one fault
FAULT_REQUEST_BOUND = 25
WORKER_NOTE = ("python -m workers is RQ's SimpleWorker with a thread pool: no separate work-horse, so "
               "killing 'the parent', 'the work-horse' or 'both' is the same SIGKILL of one process")

#: emulator fault -> (how it is armed, expected state, expected error code or None)
EMULATOR_FAULTS: dict[str, tuple[str, str, str | None]] = {
    "rate_limit_burst": ("rate_limit_burst:count=3", "done", None),
    "server_error": ("server_error:count=2,routes=stream|status", "done", None),
    "server_error on /run": ("server_error:count=1,routes=run", "failed", "provider_unavailable"),
    "drop_connection": ("drop_connection:count=2", "done", None),
    "failed_handler": ("failed_handler:count=1", "failed", "provider_error"),
    "failed_generator": ("failed_generator:count=1", "failed", "provider_error"),
    "timed_out": ("timed_out:count=1", "failed", "provider_timeout"),
    "stall": ("stall:count=1", "failed", "provider_timeout"),
    "completed_without_output": ("completed_without_output:count=1", "done", None),
    "cold_start": ("cold_start:count=1,seconds=2", "done", None),
}


@dataclass
class Row:
    check: str
    measured: str
    target: str
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)


def check_names() -> list[str]:
    """Every row the summary prints (the CI smoke test asserts each one is there)."""
    names = ["worker SIGKILL: replies lost", "worker SIGKILL: replies duplicated",
             "worker SIGKILL: replies stuck", "worker SIGKILL: recovery (kill -> final)",
             "websocket cut + resume: gaps", "websocket cut + resume: duplicates"]
    names += [f"runpod emulator fault: {name}" for name in EMULATOR_FAULTS]
    names += ["runpod emulator faults: every injectable fault covered"]
    names += ["redis restart (AOF everysec) under load: accepted lost",
              "redis restart (AOF everysec) under load: unclean refusals"]
    return names


# -- helpers --------------------------------------------------------------------------------------

class Client:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {stack.key}"

    def conversation(self, **fields: Any) -> str:
        r = self.session.post(f"{self.stack.url}/api/v1/conversations", json=fields, timeout=30)
        r.raise_for_status()
        return r.json()["id"]

    def send(self, cid: str, content: str, **params: Any) -> requests.Response:
        body: dict[str, Any] = {"content": content}
        if params:
            body["params"] = params
        return self.session.post(f"{self.stack.url}/api/v1/conversations/{cid}/messages", json=body, timeout=30)


def record(stack: Stack, mid: str) -> dict[str, str]:
    return stack.redis.hgetall(f"{P}msg:{mid}")


def events(stack: Stack, mid: str) -> list[dict[str, Any]]:
    return [{"type": f["t"], "seq": int(i.split("-")[1]), **json.loads(f["d"])}
            for i, f in stack.redis.xrange(f"{P}ev:{mid}")]


def wait_final(stack: Stack, mids: list[str], bound: float, poll: float = 0.05) -> dict[str, float]:
    """{mid: time.time() it was first seen final}, for those that ended within ``bound`` seconds."""
    deadline = time.time() + bound
    ended: dict[str, float] = {}
    while len(ended) < len(mids) and time.time() < deadline:
        pending = [m for m in mids if m not in ended]
        with stack.redis.pipeline(transaction=False) as pipe:
            for mid in pending:
                pipe.hget(f"{P}msg:{mid}", "state")
            states = pipe.execute()
        now = time.time()
        for mid, state in zip(pending, states):
            if state in FINAL_STATES:
                ended[mid] = now
        time.sleep(poll)
    return ended


def consistent(stack: Stack, mid: str, expected: str | None) -> bool:
    """Stored content == its events' text, seq gap-free, one terminal event; and == ``expected``."""
    h = record(stack, mid)
    evs = events(stack, mid)
    seqs = [e["seq"] for e in evs]
    text = "".join(e["text"] for e in evs if e["type"] == "delta")
    terminals = [e for e in evs if e["type"] in ("done", "error")]
    ok = bool(h) and seqs == list(range(1, len(seqs) + 1)) and text == h.get("content") and len(terminals) == 1
    return ok and (expected is None or h.get("content") == expected)


def live_workers(stack: Stack) -> int:
    return stack.redis.zcount(f"{P}workers", int(time.time() * 1000), "+inf")


def wait_worker(stack: Stack, bound: float = 60) -> None:
    deadline = time.time() + bound
    while live_workers(stack) < 1:
        if time.time() > deadline or (stack.worker is not None and stack.worker.poll() is not None):
            raise RuntimeError("no worker came up\n" + stack.log_tail(getattr(stack, "worker_log", "worker")))
        time.sleep(0.1)


def echo_of(content: str) -> str:
    return f"Echo (assistant): {content}"


# -- worker SIGKILL -----------------------------------------------------------------------------

def check_worker_kill(stack: Stack, trials: int, rng: random.Random, budget_s: float,
                      all_generating: bool = False) -> list[Row]:
    """``all_generating`` (the smoke): kill only once all three replies are generating. Otherwise
    the two other replies may be anywhere, including between RQ starting their job and the job
    claiming the reply, where recovery waits for QUEUE_GRACE_S (15 s by default) instead of the lease."""
    client = Client(stack)
    words = 40
    lost = duplicated = stuck = missed = 0
    total = interrupted = 0
    recoveries: list[float] = []
    started = time.time()
    done_trials = 0
    for trial in range(trials):
        if time.time() - started > budget_s:
            break
        wait_worker(stack)
        # three replies in flight; the kill lands at a random point of the first one
        sent: dict[str, str] = {}
        for k in range(3):
            content = " ".join(f"t{trial}r{k}w{j}" for j in range(words))
            r = client.send(client.conversation(), content)
            if r.status_code != 202:
                raise RuntimeError(f"send refused: {r.status_code} {r.text[:200]}")
            sent[r.json()["message_id"]] = echo_of(content)
        target = next(iter(sent))
        point = int(rng.random() * len(sent[target]))
        deadline = time.time() + 30
        while time.time() < deadline:
            h = stack.redis.hmget(f"{P}msg:{target}", "state")[0]
            got = stack.redis.strlen(f"{P}msg:{target}:partial")
            if h in FINAL_STATES:
                break
            if h == "generating" and got >= point:
                if not all_generating or all(
                        stack.redis.hget(f"{P}msg:{m}", "state") == "generating" for m in sent):
                    break
            time.sleep(0.005)
        with stack.redis.pipeline(transaction=False) as pipe:
            for mid in sent:
                pipe.hget(f"{P}msg:{mid}", "state")
            states_before = dict(zip(sent, pipe.execute()))
        stack.kill_worker(signal.SIGKILL)
        killed_at = time.time()
        # the replies the kill interrupted (the target may have just finished at a point near its end)
        in_flight = [m for m, state in states_before.items() if state not in FINAL_STATES]
        if states_before[target] in FINAL_STATES:
            missed += 1
        stack.worker_log = f"worker-{trial + 1}"
        stack.start_worker(stack.worker_log)
        ended = wait_final(stack, list(sent), STUCK_AFTER_S)
        done_trials += 1
        total += len(sent)
        for mid, expected in sent.items():
            if not record(stack, mid):
                lost += 1
            elif mid not in ended:
                stuck += 1
            elif not consistent(stack, mid, expected):
                duplicated += 1
        interrupted += len(in_flight)
        recovery = float("nan")
        if in_flight and all(m in ended for m in in_flight):
            recovery = max(ended[m] for m in in_flight) - killed_at
            recoveries.append(recovery)
        elif in_flight:
            recoveries.append(float("inf"))
        print(f"  worker kill {trial + 1}/{trials}: at char {point} of {len(sent[target])}, {len(in_flight)} replies "
              f"interrupted, all final {recovery:.1f} s after the kill", flush=True)
    rec = summary(recoveries)
    details = {"trials": done_trials, "replies": total, "replies_interrupted": interrupted,
               "target_finished_before_kill": missed, "recovery_s": rec, "note": WORKER_NOTE}
    all_run = done_trials == trials
    return [
        Row("worker SIGKILL: replies lost", f"{lost} / {total} ({interrupted} interrupted mid-reply)", "0",
            lost == 0 and all_run, details),
        Row("worker SIGKILL: replies duplicated", f"{duplicated} / {total}", "0", duplicated == 0 and all_run),
        Row("worker SIGKILL: replies stuck", f"{stuck} / {total} (not final in {STUCK_AFTER_S:.0f} s)", "0",
            stuck == 0 and all_run),
        Row("worker SIGKILL: recovery (kill -> final)",
            f"p50 {rec['p50']:.1f} s, max {rec['max']:.1f} s ({done_trials}/{trials} kills)",
            f"<= {RECOVERY_TARGET_S:.0f} s", all_run and bool(recoveries) and rec["max"] <= RECOVERY_TARGET_S),
    ]


# -- websocket cut + resume ---------------------------------------------------------------------

def ws_connect(stack: Stack) -> websocket.WebSocket:
    return websocket.create_connection(stack.ws_url, header=[f"Authorization: Bearer {stack.key}"], timeout=30,
                                       suppress_origin=True)


def cut(conn: websocket.WebSocket) -> None:
    """Drop the connection the way a network does: no close frame."""
    try:
        conn.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.sock.close()


def resume_trial(stack: Stack, cid: str, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    words = 20
    content = " ".join(f"c{seed}w{j}" for j in range(words))
    # events: queued, generating, one delta per word, done
    cut_at = rng.randint(1, words + 2)
    seen: list[dict[str, Any]] = []
    conn = ws_connect(stack)
    try:
        conn.send(json.dumps({"type": "send", "conversation_id": cid, "content": content}))
        mid = None
        deadline = time.time() + 30
        while time.time() < deadline:
            frame = json.loads(conn.recv())
            if frame["type"] == "accepted":
                mid = frame["message_id"]
            elif mid and frame.get("message_id") == mid and "seq" in frame:
                seen.append(frame)
                if frame["seq"] >= cut_at or frame["type"] in ("done", "error"):
                    break
    finally:
        cut(conn)
    if mid is None:
        raise RuntimeError("no accepted frame")
    after = seen[-1]["seq"] if seen else 0
    resumed: list[dict[str, Any]] = []
    if not seen or seen[-1]["type"] not in ("done", "error"):
        conn = ws_connect(stack)
        try:
            conn.send(json.dumps({"type": "subscribe", "message_id": mid, "after_seq": after}))
            deadline = time.time() + 30
            while time.time() < deadline:
                frame = json.loads(conn.recv())
                if frame.get("message_id") == mid:
                    resumed.append(frame)
                    if frame["type"] in ("done", "error"):
                        break
        finally:
            conn.close()
    seqs = [f["seq"] for f in seen + resumed if "seq" in f]
    final_seq = int(record(stack, mid).get("final_seq") or 0)
    duplicates = len(seqs) - len(set(seqs))
    gaps = len(set(range(1, final_seq + 1)) - set(seqs)) if final_seq else 1
    text = "".join(f["text"] for f in seen + resumed if f["type"] == "delta")
    stored = record(stack, mid).get("content")
    if text != stored and not duplicates and not gaps:
        gaps += 1  # a text mismatch the seq check did not see counts against the check
    return {"cut_at": after, "final_seq": final_seq, "gaps": gaps, "duplicates": duplicates,
            "text_ok": text == stored == echo_of(content)}


def check_ws_resume(stack: Stack, trials: int, seed: int, budget_s: float) -> list[Row]:
    client = Client(stack)
    cids = [client.conversation() for _ in range(4)]
    started = time.time()
    results: list[dict[str, Any]] = []
    errors: list[str] = []

    def one(i: int) -> None:
        if time.time() - started > budget_s:
            return
        try:
            results.append(resume_trial(stack, cids[i % len(cids)], seed * 1000 + i))
        except Exception as exc:  # counted: a trial that could not resume is a failure
            errors.append(f"{type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(4) as pool:  # 4 at once: one socket per conversation at a time
        for batch in range(0, trials, 4):
            list(pool.map(one, range(batch, min(trials, batch + 4))))
    gaps = sum(r["gaps"] for r in results) + len(errors)
    dups = sum(r["duplicates"] for r in results)
    n = len(results)
    details = {"trials": n, "errors": errors[:5], "text_mismatches": sum(1 for r in results if not r["text_ok"]),
               "cut_points": sorted(r["cut_at"] for r in results)}
    print(f"  websocket resume: {n}/{trials} trials, cut at seq {min(details['cut_points'] or [0])}.."
          f"{max(details['cut_points'] or [0])}", flush=True)
    complete = n == trials
    return [Row("websocket cut + resume: gaps", f"{gaps} over {n} trials", "0", gaps == 0 and complete, details),
            Row("websocket cut + resume: duplicates", f"{dups} over {n} trials", "0", dups == 0 and complete)]


# -- RunPod emulator faults -----------------------------------------------------------------------

class CountingApp:
    """WSGI middleware: counts the emulator's HTTP requests (every route, every answer)."""

    def __init__(self, app: Callable) -> None:
        self.app = app
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        with self.lock:
            self.count += 1
        return self.app(environ, start_response)


def start_emulator() -> tuple[EmulatorServer, CountingApp]:
    cfg = EmulatorConfig(cold_start_s=0.3, idle_timeout_s=2.0, ttft_s=0.05, tokens_per_s=100,
                         min_execution_timeout_ms=0, min_ttl_ms=0)
    srv = EmulatorServer(cfg, host="127.0.0.1", port=0, api_key=EMU_KEY)
    counter = CountingApp(srv.app.wsgi_app)
    srv.app.wsgi_app = counter  # type: ignore[method-assign]
    srv.start()
    return srv, counter


def check_emulator_faults(stack: Stack, emu: EmulatorServer, counter: CountingApp) -> list[Row]:
    client = Client(stack)
    rows = []
    pool = emu.emulator.pool(EP)  # the endpoint exists before faults are armed
    for name, (spec, state, code) in EMULATOR_FAULTS.items():
        cid = client.conversation(provider="runpod")
        jobs_before = len(pool.jobs)
        emu.emulator.arm_fault(EP, spec)
        requests_before = counter.count
        t0 = time.time()
        r = client.send(cid, f"fault {name}", max_tokens=30)
        measured, ok, details = "", False, {"fault": spec}
        if r.status_code != 202:
            measured = f"send refused {r.status_code}"
        else:
            mid = r.json()["message_id"]
            ended = wait_final(stack, [mid], FAULT_TIME_BOUND_S + 10)
            elapsed = (ended.get(mid) or time.time()) - t0
            time.sleep(0.3)  # let a cancel or a last status call land before counting
            h = record(stack, mid)
            got_code = json.loads(h.get("error") or "{}").get("code")
            n_requests = counter.count - requests_before
            n_jobs = len(pool.jobs) - jobs_before
            meta = json.loads(h.get("meta") or "{}")
            details.update(state=h.get("state"), code=got_code, elapsed_s=round(elapsed, 2),
                           emulator_requests=n_requests, provider_api_calls=meta.get("api_calls"), jobs=n_jobs)
            expected_jobs = 0 if "routes=run" in spec else 1
            ok = (h.get("state") == state and got_code == code and elapsed <= FAULT_TIME_BOUND_S
                  and n_requests <= FAULT_REQUEST_BOUND and n_jobs == expected_jobs and consistent(stack, mid, None))
            measured = (f"{h.get('state')}{'/' + got_code if got_code else ''} in {elapsed:.1f} s, "
                        f"{n_requests} requests, {n_jobs} job{'s' if n_jobs != 1 else ''}")
        target = (f"{state}{'/' + code if code else ''} <= {FAULT_TIME_BOUND_S:.0f} s, "
                  f"<= {FAULT_REQUEST_BOUND} requests, {0 if 'routes=run' in spec else 1} job")
        rows.append(Row(f"runpod emulator fault: {name}", measured, target, ok, details))
        print(f"  emulator fault {name}: {measured}", flush=True)
        # a fault that was not consumed must not leak into the next trial
        with emu.emulator.lock:
            pool.faults.clear()
    covered = {spec.split(":")[0] for spec, _state, _code in EMULATOR_FAULTS.values()}
    missing = sorted(set(FAULTS) - covered)
    rows.append(Row("runpod emulator faults: every injectable fault covered",
                    f"{len(set(FAULTS) & covered)}/{len(FAULTS)}" + (f" (missing: {', '.join(missing)})" if missing else ""),
                    f"{len(FAULTS)}/{len(FAULTS)}", not missing))
    return rows


# -- redis restart under load ---------------------------------------------------------------------

def check_redis_restart(stack: Stack, load_s: float, senders: int) -> list[Row]:
    client = Client(stack)
    cids = [client.conversation() for _ in range(senders)]
    accepted: dict[str, str] = {}
    refused: list[int] = []
    unclean: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def sender(i: int) -> None:
        c = Client(stack)
        for n in range(1000):
            if stop.is_set():
                return
            content = " ".join(f"s{i}n{n}w{j}" for j in range(15))
            try:
                r = c.send(cids[i], content)
            except requests.RequestException as exc:
                with lock:
                    unclean.append(repr(exc))
                stop.wait(0.2)
                continue
            with lock:
                if r.status_code == 202:
                    accepted[r.json()["message_id"]] = echo_of(content)
                else:
                    refused.append(r.status_code)
                    try:
                        clean = r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
                    except (ValueError, KeyError, TypeError):
                        clean = False
                    if not clean:
                        unclean.append(f"{r.status_code} {r.text[:200]}")
            stop.wait(0.1)

    threads = [threading.Thread(target=sender, args=(i,), daemon=True) for i in range(senders)]
    for t in threads:
        t.start()
    try:
        time.sleep(load_s / 3)
        before = len(accepted)
        back_at = stack.restart_redis(down_s=1.0)
        time.sleep(max(0.0, load_s * 2 / 3 - 1))
    finally:
        stop.set()
        for t in threads:
            t.join(40)
    mids = list(accepted)
    ended = wait_final(stack, mids, STUCK_AFTER_S, poll=0.25)
    lost = {m: why_lost(stack, m, m in ended, accepted[m]) for m in mids}
    lost = {m: why for m, why in lost.items() if why}
    details = {"accepted": len(mids), "accepted_before_restart": before, "refused": len(refused),
               "lost": dict(list(lost.items())[:10]), "lost_by_reason": dict(Counter(lost.values())),
               "unclean": unclean[:5], "redis_back_at": back_at}
    print(f"  redis restart: {len(mids)} accepted ({before} before the restart), {len(refused)} refused", flush=True)
    return [Row("redis restart (AOF everysec) under load: accepted lost", f"{len(lost)} / {len(mids)}", "0",
                not lost and before > 0 and len(mids) > before, details),
            Row("redis restart (AOF everysec) under load: unclean refusals",
                f"{len(unclean)} (of {len(refused)} refused)", "0 (only 503 unavailable)", not unclean)]


#: a reply stuck because the worker's BLPOP popped its job and the answer was lost with the
#: connection: RQ still says "queued" while no list holds the job (the reaper re-enqueues such
#: replies after the queue grace; named apart so a regression is easy to recognise)
LOST_DEQUEUE = "stuck: job popped but in no RQ list, status still queued (lost dequeue)"


def why_lost(stack: Stack, mid: str, final: bool, expected: str) -> str | None:
    """None when the accepted reply is stored, final and exactly its text; else what is wrong."""
    h = record(stack, mid)
    if not h:
        return "not stored"
    if final:
        return None if consistent(stack, mid, expected) else "text differs from its events or the expected text"
    job_id = h.get("job_id", "")
    status = stack.redis.hget(f"rq:job:{job_id}", "status")
    held = [k for k in stack.redis.scan_iter("rq:*", count=1000)
            if stack.redis.type(k) == "list" and stack.redis.lpos(k, job_id) is not None]
    if h.get("state") == "queued" and status == "queued" and not held:
        return LOST_DEQUEUE
    return f"not final in {STUCK_AFTER_S:.0f} s: state {h.get('state')}, RQ job {status}, in lists {held}"


# -- main -------------------------------------------------------------------------------------------

def machine_details() -> dict[str, Any]:
    out = machine()
    try:
        with open("/proc/cpuinfo") as f:
            out["cpu_model"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                                    None)
        with open("/proc/meminfo") as f:
            out["mem_total_gib"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return out


def run(smoke: bool, seed: int) -> list[Row]:
    rng = random.Random(seed)
    emu, counter = start_emulator()
    env = {"CHATAPP_DEFAULT_PROVIDER": "echo", "CHATAPP_ECHO_DELAY_S": str(ECHO_DELAY_S),
           "CHATAPP_CACHE_ENABLED": "false", "RUNPOD_API_KEY": EMU_KEY, "RUNPOD_ENDPOINT_ID": EP,
           "RUNPOD_BASE_URL": emu.base_url, "RUNPOD_GPU": "L4", "RUNPOD_STALL_TIMEOUT_S": "3"}
    stack = Stack.__new__(Stack)
    try:
        stack.__init__(env, web_workers=1, worker_concurrency=100, appendonly=True)  # type: ignore[misc]
        stack.worker_log = "worker"
        wait_worker(stack)
        rows: list[Row] = []
        steps: list[tuple[str, Callable[[], list[Row]], list[str]]] = [
            ("websocket cut + resume", lambda: check_ws_resume(stack, 10 if smoke else 100, seed, 120 if smoke else 600),
             check_names()[4:6]),
            ("RunPod emulator faults", lambda: check_emulator_faults(stack, emu, counter),
             [n for n in check_names() if n.startswith("runpod")]),
            ("worker SIGKILL", lambda: check_worker_kill(stack, 3 if smoke else 50, rng, 120 if smoke else 1200,
                                                       all_generating=smoke),
             check_names()[:4]),
            ("redis restart under load", lambda: check_redis_restart(stack, 6 if smoke else 12, 4 if smoke else 6),
             check_names()[-2:]),
        ]
        for title, step, names in steps:
            print(f"{title} ...", flush=True)
            try:
                rows += step()
            except Exception as exc:  # the check could not run: each of its rows fails, the rest go on
                print(f"  {title} failed to run: {type(exc).__name__}: {exc}", flush=True)
                rows += [Row(n, f"did not run ({type(exc).__name__})", "-", False, {"error": str(exc)[:2000]})
                         for n in names]
        return rows
    finally:
        if hasattr(stack, "procs"):
            stack.close()
        emu.stop()


def print_table(rows: list[Row]) -> None:
    widths = [max(len(r.check) for r in rows), max(len(r.measured) for r in rows), max(len(r.target) for r in rows)]
    head = ("check", "measured", "target")
    print()
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)) + "  result")
    print("  ".join("-" * w for w in widths) + "  ------")
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip((r.check, r.measured, r.target), widths))
              + ("  PASS" if r.passed else "  FAIL"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a short version of every check (CI)")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: time-based, printed)")
    args = parser.parse_args(argv)

    def on_sigterm(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop every process

    signal.signal(signal.SIGTERM, on_sigterm)
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    started = time.time()
    info = machine_details()
    print(f"fault suite ({'smoke' if args.smoke else 'full'}), seed {seed}; {info.get('cpus')} CPUs "
          f"({info.get('cpu_model')}), {info.get('mem_total_gib')} GiB")
    print(f"note: {WORKER_NOTE}", flush=True)
    rows = run(args.smoke, seed)
    print_table(rows)
    failed = [r for r in rows if not r.passed]
    wall = time.time() - started
    print(f"\n{len(rows) - len(failed)}/{len(rows)} checks passed in {wall:.0f} s"
          + (f"; FAILED: {', '.join(r.check for r in failed)}" if failed else ""))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": info, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "mode": "smoke" if args.smoke else "full", "seed": seed, "wall_s": round(wall, 1),
                       "note": WORKER_NOTE,
                       "checks": [{"check": r.check, "measured": r.measured, "target": r.target,
                                   "passed": r.passed, "details": r.details} for r in rows]}, f, indent=2,
                      default=str)
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
