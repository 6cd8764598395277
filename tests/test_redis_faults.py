"""Redis faults under load (issue 6): every connection killed, every client paused, and the server
restarted with its AOF, while a real web process (gunicorn + gevent) and a real worker process
(``python -m workers``) carry concurrent REST and websocket sends.

For each fault: every accepted send (202 or an ``accepted`` frame) ends stored and final, its
text exactly the concatenation of its events (nothing doubled, nothing lost), every user message
has its reply, refused sends are clean 503s / ``unavailable`` frames (never a 500), and a new send
is served normally within 5 s of the fault clearing.

Everything runs against a private redis-server started here (own temp dir, free loopback port,
``appendonly yes``, ``appendfsync everysec``); no other Redis is touched. The processes use the test
suite's fast leases (``conftest.FAST``: 1.5 s), so a 3 s pause also lapses every lease in flight.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import redis
import requests
import websocket

from tests.conftest import FAST, RedisServer, close_app, free_port, make_app, redis_binary
from tests.processes import Proc, env_for, python

pytestmark = pytest.mark.slow

PREFIX = "rf:"
WORDS = 16  # words per message; the echo reply is "Echo (assistant): " + the message
ECHO_DELAY_S = 0.04  # per word: a reply takes ~0.7 s, so dozens are in flight at any moment
REST_SENDERS, WS_SENDERS = 4, 3
SEND_GAP_S = 0.15
MAX_SENDS_PER_SENDER = 60
FINAL_BOUND_S = 25  # every stored reply must be final this long after the load stops
RECOVERY_BOUND_S = 5.0
CLEAN_ERROR_CODES = {"unavailable"}  # what a send refused during a Redis fault may say
#: a reply may fail only with a code that says what happened (never the generic internal_error)
CLEAR_FAILURE_CODES = {"worker_lost", "retry_diverged", "job_timeout"}


def expected_reply(content: str) -> str:
    return f"Echo (assistant): {content}"


@dataclass
class Load:
    """What the senders saw: accepted replies, refused sends, and per-socket frames."""

    accepted: dict[str, dict[str, Any]] = field(default_factory=dict)  # mid -> {content, via, cid}
    refused: list[tuple[str, Any]] = field(default_factory=list)  # (via, status code or error frame)
    bad: list[str] = field(default_factory=list)  # anything that is not a clean answer
    frames: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # ws replies' frames
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped_at: float = 0.0  # when the senders were told to stop


class FaultStack:
    """A private AOF redis-server, gunicorn web, ``python -m workers``, one user; all torn down."""

    def __init__(self, tmp_path: Any) -> None:
        self.tmp = tmp_path
        self.server = RedisServer(redis_binary(), appendonly=True)
        self.procs: list[Proc] = []
        self.app = None
        try:
            self.config = {"REDIS_URL": self.server.url, "KEY_PREFIX": PREFIX, "QUEUE_NAME": "chat-rf", **FAST,
                           "MAX_ACTIVE_GENERATIONS": 0, "RATE_LIMIT_SENDS_PER_MINUTE": 0,
                           "RATE_LIMIT_REQUESTS_PER_MINUTE": 0, "MAX_SOCKETS_PER_USER": 0,
                           "CACHE_ENABLED": False, "BUNDLED_EMULATOR": False}
            self.port = free_port()
            env = env_for(self.config, CHATAPP_ECHO_DELAY_S=ECHO_DELAY_S, PORT=self.port, WEB_CONCURRENCY=1)
            self.web = self._proc([os.path.join(os.path.dirname(python()[0]), "gunicorn"), "-c", "gunicorn.conf.py",
                                   "wsgi:app", "--access-logfile", "/dev/null"], env, "web")
            self.worker = self._proc(python("-m", "workers", "--concurrency", "40"), env, "worker")
            self.url = f"http://127.0.0.1:{self.port}"
            self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
            # a plain client with redis-py's own retries, for the test's checks only
            self.r = redis.Redis(port=self.server.port, decode_responses=True)
            self.control = redis.Redis(port=self.server.port, decode_responses=True)
            self.app = make_app(self.config)
            self.key = self.app.extensions["chatapp"].users.create("faults")[1]
            self._wait_ready(60)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout: float) -> None:
        """/readyz answers 200 (Redis reachable, a worker alive); a busy machine may be slow to boot."""
        deadline = time.time() + timeout
        while True:
            try:
                if requests.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise AssertionError(f"the stack did not become ready within {timeout} s\n{self.logs()}")
            time.sleep(0.2)

    def _proc(self, args: list[str], env: dict[str, str], name: str) -> Proc:
        proc = Proc(args, env, str(self.tmp / f"{name}.log"))
        self.procs.append(proc)
        return proc

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path}\n{p.output()[-4000:]}" for p in self.procs)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
        if self.app is not None:
            try:
                close_app(self.app)
            except Exception:
                pass
        self.server.cleanup()


@pytest.fixture()
def stack(tmp_path):
    s = FaultStack(tmp_path)
    yield s
    s.close()


def rest_sender(stack: FaultStack, load: Load, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    session = requests.Session()
    cid = session.post(f"{stack.url}/api/v1/conversations", json={}, headers=stack.headers, timeout=30).json()["id"]
    for i in range(MAX_SENDS_PER_SENDER):
        if stop.is_set():
            return
        content = " ".join(f"r{seed}m{i}w{j}" for j in range(WORDS))
        try:
            resp = session.post(f"{stack.url}/api/v1/conversations/{cid}/messages", json={"content": content},
                                headers=stack.headers, timeout=30)
        except requests.RequestException as exc:
            with load.lock:
                load.bad.append(f"REST send raised {exc!r}")
            continue
        with load.lock:
            if resp.status_code == 202:
                load.accepted[resp.json()["message_id"]] = {"content": content, "via": "rest", "cid": cid}
            else:
                body = resp.text
                try:
                    code = resp.json()["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = None
                load.refused.append(("rest", resp.status_code))
                if resp.status_code != 503 or code not in CLEAN_ERROR_CODES or "Traceback" in body \
                        or not resp.headers.get("Retry-After"):
                    load.bad.append(f"REST send answered {resp.status_code}: {body[:300]}")
        stop.wait(rng.uniform(0.5, 1.5) * SEND_GAP_S)


def ws_sender(stack: FaultStack, load: Load, stop: threading.Event, seed: int, drain_until: list[float]) -> None:
    """Sends on one socket and keeps every frame of its replies until each one ends."""
    rng = random.Random(seed)
    cid = requests.post(f"{stack.url}/api/v1/conversations", json={}, headers=stack.headers,
                        timeout=30).json()["id"]
    conn = websocket.create_connection(stack.ws_url, header=[f"Authorization: Bearer {stack.key}"], timeout=30,
                                       suppress_origin=True)
    mine: set[str] = set()
    ended: set[str] = set()
    accepted_cmids: set[str] = set()

    def take(frame: dict[str, Any]) -> None:
        if frame["type"] == "error" and frame.get("client_message_id") in accepted_cmids:
            with load.lock:  # one send both accepted and refused: the client cannot tell which
                load.bad.append(f"error frame after the send was accepted: {frame}")
        mid = frame.get("message_id")
        if mid:
            with load.lock:
                load.frames.setdefault(mid, []).append(frame)
            if frame["type"] in ("done", "error") and "seq" in frame:
                ended.add(mid)

    def recv(timeout: float) -> dict[str, Any] | None:
        conn.settimeout(max(0.05, timeout))
        try:
            return json.loads(conn.recv())
        except websocket.WebSocketTimeoutException:
            return None

    try:
        for i in range(MAX_SENDS_PER_SENDER):
            if stop.is_set():
                break
            content = " ".join(f"s{seed}m{i}w{j}" for j in range(WORDS))
            cmid = f"c{seed}-{i}"
            conn.send(json.dumps({"type": "send", "conversation_id": cid, "content": content,
                                  "client_message_id": cmid}))
            deadline = time.time() + 30
            while True:
                frame = recv(deadline - time.time())
                if frame is None:
                    with load.lock:
                        load.bad.append(f"websocket send {cmid}: no answer within 30 s")
                    break
                if frame.get("client_message_id") == cmid and frame["type"] == "accepted":
                    with load.lock:
                        load.accepted[frame["message_id"]] = {"content": content, "via": "ws", "cid": cid}
                        load.frames.setdefault(frame["message_id"], [])
                    mine.add(frame["message_id"])
                    accepted_cmids.add(cmid)
                    break
                if frame.get("client_message_id") == cmid and frame["type"] == "error":
                    with load.lock:
                        load.refused.append(("ws", frame["code"]))
                        if frame["code"] not in CLEAN_ERROR_CODES or "Traceback" in frame.get("message", ""):
                            load.bad.append(f"websocket send refused unclearly: {frame}")
                    break
                take(frame)
            pause = time.time() + rng.uniform(0.5, 1.5) * SEND_GAP_S
            while time.time() < pause:
                frame = recv(pause - time.time())
                if frame is not None:
                    take(frame)
        # keep reading until every reply this socket sent has ended (bounded)
        while mine - ended and time.time() < drain_until[0]:
            frame = recv(min(1.0, drain_until[0] - time.time()))
            if frame is not None:
                take(frame)
    except (websocket.WebSocketException, OSError) as exc:
        with load.lock:
            load.bad.append(f"websocket {seed} failed: {exc!r}")
    finally:
        conn.close()


def probe_recovery(stack: FaultStack, cleared_at: float, bound: float = RECOVERY_BOUND_S) -> float:
    """Seconds from the fault clearing until a new send is accepted and its reply is done."""
    session = requests.Session()
    n = 0
    while time.time() - cleared_at < bound + 10:
        n += 1
        try:
            cid = session.post(f"{stack.url}/api/v1/conversations", json={}, headers=stack.headers,
                               timeout=5).json().get("id")
            resp = session.post(f"{stack.url}/api/v1/conversations/{cid}/messages?wait=true",
                                json={"content": f"probe {n}"}, headers=stack.headers, timeout=10)
            if resp.status_code == 200 and resp.json()["message"]["state"] == "done":
                return time.time() - cleared_at
        except (requests.RequestException, ValueError, AttributeError):
            pass
        time.sleep(0.1)
    return float("inf")


def run_under_load(stack: FaultStack, fault: Callable[[], float]) -> tuple[Load, float]:
    """Senders run; ``fault`` is applied 1.5 s in and returns when the fault cleared; a probe
    measures recovery while the load goes on for 2 s more."""
    load = Load()
    stop = threading.Event()
    drain_until = [time.time() + 300]
    threads = [threading.Thread(target=rest_sender, args=(stack, load, stop, i), daemon=True)
               for i in range(REST_SENDERS)]
    threads += [threading.Thread(target=ws_sender, args=(stack, load, stop, 100 + i, drain_until), daemon=True)
                for i in range(WS_SENDERS)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        with load.lock:
            before = len(load.accepted)
        assert before > 0, "no send was accepted before the fault\n" + stack.logs()
        cleared_at = fault()
        recovery = probe_recovery(stack, cleared_at)
        time.sleep(max(0.0, cleared_at + 2 - time.time()))
    finally:
        stop.set()
        load.stopped_at = time.time()
        drain_until[0] = load.stopped_at + FINAL_BOUND_S
        for t in threads:
            t.join(FINAL_BOUND_S + 35)
    assert not any(t.is_alive() for t in threads), "a sender did not finish"
    return load, recovery


def wait_final(stack: FaultStack, mids: list[str], bound: float = FINAL_BOUND_S) -> dict[str, dict[str, str]]:
    deadline = time.time() + bound
    while True:
        with stack.r.pipeline(transaction=False) as pipe:
            for mid in mids:
                pipe.hgetall(f"{PREFIX}msg:{mid}")
            records = dict(zip(mids, pipe.execute()))
        pending = [m for m, h in records.items() if h.get("state") not in ("done", "failed", "cancelled")]
        if not pending or time.time() > deadline:
            return records
        time.sleep(0.25)


def events(stack: FaultStack, mid: str) -> list[dict[str, Any]]:
    return [{"type": f["t"], "seq": int(i.split("-")[1]), **json.loads(f["d"])}
            for i, f in stack.r.xrange(f"{PREFIX}ev:{mid}")]


def stuck_detail(stack: FaultStack, mid: str, h: dict[str, str]) -> dict[str, Any]:
    """Where a reply that is not final stands: its state, its RQ job's status, and which RQ lists
    still hold the job (none, for a job whose dequeue was lost)."""
    job_id = h.get("job_id", "")
    lists = [k for k in stack.r.scan_iter("rq:*", count=1000) if stack.r.type(k) == "list"
             and stack.r.lpos(k, job_id) is not None]
    return {"state": h.get("state"), "owner": h.get("owner"), "job_id": job_id,
            "job_status": stack.r.hget(f"rq:job:{job_id}", "status"), "job_in_lists": lists}


def check(stack: FaultStack, load: Load, recovery: float) -> dict[str, Any]:
    """Every assertion of the module, shared by the three faults; returns counts for the message."""
    assert not load.bad, load.bad[:10]
    accepted = list(load.accepted)
    assert len(accepted) >= 10, f"only {len(accepted)} sends were accepted"
    # every reply stored in any conversation of the user, accepted or not (a 503 may come after
    # the send was stored): each must be final, and each user message must have its reply
    uid = stack.r.hget(f"{PREFIX}msg:{accepted[0]}", "user_id")
    all_replies: list[str] = []
    for cid in stack.r.zrange(f"{PREFIX}user:{uid}:convs", 0, -1):
        mids = stack.r.zrange(f"{PREFIX}conv:{cid}:msgs", 0, -1)
        msgs = [stack.r.hgetall(f"{PREFIX}msg:{m}") for m in mids]
        assert all(msgs), f"conversation {cid} lists a message that is not stored"
        users = [m for m in msgs if m["role"] == "user"]
        replies = [m for m in msgs if m["role"] == "assistant"]
        assert sorted(m["reply_to"] for m in replies) == sorted(m["id"] for m in users), \
            f"half-written send in {cid}"
        assert int(stack.r.hget(f"{PREFIX}conv:{cid}", "message_count")) == len(mids)
        all_replies += [m["id"] for m in replies]
    missing = [m for m in accepted if m not in all_replies]
    assert not missing, f"accepted but not stored (lost): {missing[:5]}"
    records = wait_final(stack, all_replies, max(1.0, load.stopped_at + FINAL_BOUND_S - time.time()))
    stuck = {m: stuck_detail(stack, m, h) for m, h in records.items()
             if h.get("state") not in ("done", "failed", "cancelled")}
    # (a job popped by a worker whose connection died is re-enqueued by the reaper: see
    # ReplyQueue.waiting)
    assert not stuck, f"{len(stuck)} replies not final {FINAL_BOUND_S} s after the load: {list(stuck.items())[:5]}" \
                      f"\n{stack.logs()}"
    records = {m: h for m, h in records.items() if m not in stuck}
    failed = {}
    for mid, h in records.items():
        evs = events(stack, mid)
        seqs = [e["seq"] for e in evs]
        assert seqs == list(range(1, len(seqs) + 1)), (mid, seqs)
        text = "".join(e["text"] for e in evs if e["type"] == "delta")
        assert text == h["content"], f"{mid}: stored content is not its events' text (duplicated or lost)"
        assert evs[-1]["type"] in ("done", "error") and int(h["final_seq"]) == seqs[-1]
        if h["state"] == "done":
            user_text = stack.r.hget(f"{PREFIX}msg:{h['reply_to']}", "content")
            assert h["content"] == expected_reply(user_text), f"{mid}: wrong or duplicated text: {h['content']!r}"
        else:
            failed[mid] = json.loads(h["error"] or "{}").get("code")
    unclear = {m: c for m, c in failed.items() if c not in CLEAR_FAILURE_CODES}
    assert not unclear, f"replies failed without a clear code: {unclear}\n{stack.logs()}"
    # what each socket was sent: gap-free from seq 1, exactly the stored text
    for mid, frames in load.frames.items():
        if mid not in load.accepted or mid in stuck:
            continue
        seqs = [f["seq"] for f in frames if "seq" in f]
        assert seqs == list(range(1, len(seqs) + 1)), f"socket saw {mid} with gaps or repeats: {seqs}"
        assert frames and frames[-1]["type"] in ("done", "error"), f"socket never saw {mid} end"
        assert "".join(f["text"] for f in frames if f["type"] == "delta") == records[mid]["content"], \
            f"socket text of {mid} differs from the stored reply:\nsocket {frames}\nstream {events(stack, mid)}"
    assert recovery <= RECOVERY_BOUND_S, f"new sends served normally only {recovery:.1f} s after the fault"
    counts = {"accepted": len(accepted), "refused": len(load.refused), "failed": len(failed),
              "stored_replies": len(all_replies), "recovery_s": round(recovery, 2)}
    print(counts)
    return counts


def test_client_kill_all_connections_under_load(stack):
    def fault() -> float:
        for _ in range(3):
            killed = stack.control.execute_command("CLIENT", "KILL", "TYPE", "normal")
            assert killed > 0
            time.sleep(1.0)
        return time.time() - 1.0

    load, recovery = run_under_load(stack, fault)
    assert stack.worker.proc.poll() is None, "the worker process died\n" + stack.logs()
    print("CLIENT KILL x3:", check(stack, load, recovery))


def test_client_pause_all_under_load(stack):
    def fault() -> float:
        stack.control.execute_command("CLIENT", "PAUSE", 3000, "ALL")
        time.sleep(3.0)
        return time.time()

    load, recovery = run_under_load(stack, fault)
    assert stack.worker.proc.poll() is None, "the worker process died\n" + stack.logs()
    print("CLIENT PAUSE 3000 ALL:", check(stack, load, recovery))


def test_redis_restart_with_aof_under_load(stack):
    def fault() -> float:
        stack.server.stop()  # SIGTERM: redis fsyncs the AOF and exits
        time.sleep(1.0)
        stack.server.start()  # same port, same dir: reloads the AOF
        return time.time()

    load, recovery = run_under_load(stack, fault)
    assert stack.worker.proc.poll() is None, "the worker process died\n" + stack.logs()
    print("redis-server restart:", check(stack, load, recovery))


def test_fenced_run_does_not_stop_its_retry_in_the_same_process(ext):
    """Found by the pause test: the reaper fenced a run out and re-enqueued the reply, the retry
    started in the same worker process, then the fenced run noticed and stopped (and untracked)
    the reply by its id, cancelling the retry: the reply ended "cancelled" with nobody asking."""
    from chatapp.models import GenerationContext
    from workers.keeper import LeaseKeeper

    class Provider:
        id = "stub"
        cancelled: list[GenerationContext] = []

        def cancel(self, context: GenerationContext) -> None:
            self.cancelled.append(context)

    keeper = LeaseKeeper(ext)  # not started: only its bookkeeping is under test
    first, retry = GenerationContext("m1"), GenerationContext("m1", attempt=2)
    keeper.track("m1", "token-1", first, Provider())
    keeper.track("m1", "token-2", retry, Provider())  # the retry replaced the fenced run
    keeper.stop_generation("m1", "fenced", "token-1")  # what the fenced run does on FencedOut
    keeper.untrack("m1", "token-1")  # and in its finally
    assert not retry.cancelled.is_set()
    assert keeper.running["m1"].token == "token-2"  # still tracked, so its lease is renewed
    keeper.stop_generation("m1", "lost", "token-2")
    assert retry.cancelled.is_set()
