"""The real processes: ``python -m workers`` killed with SIGKILL mid-reply, the Procfile's web
(gunicorn + gevent) and worker against a real redis-server, and the users CLI."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import free_port
from tests.processes import Proc, env_for, python, wait_http
from tests.wsclient import WS, assert_gap_free, text_of

pytestmark = pytest.mark.slow

WORDS = " ".join(f"word{i}" for i in range(80))
EXPECTED = f"Echo (assistant): {WORDS}"
FLASK = os.path.join(os.path.dirname(sys.executable), "flask")


def start_worker(app_config, tmp_path, name):
    env = env_for(app_config, CHATAPP_ECHO_DELAY_S="0.04")
    return Proc(python("-m", "workers", "--concurrency", "8"), env, str(tmp_path / f"{name}.log"))


def wait_workers(ext, n, timeout=20):
    deadline = time.time() + timeout
    while ext.live_workers() < n:
        assert time.time() < deadline, "worker did not come up"
        time.sleep(0.1)


def test_sigkill_worker_mid_reply_resumes_without_duplicates(ext, app_config, tmp_path):
    first = start_worker(app_config, tmp_path, "w1")
    second = None
    try:
        wait_workers(ext, 1)
        user = ext.users.create("killme")[0]
        acc = ext.chat.send(user, conversation_id=None, content=WORDS)
        partial_key = f"{ext.prefix}msg:{acc.message_id}:partial"
        deadline = time.time() + 20
        while len(ext.redis.get(partial_key) or "") < 60:
            assert time.time() < deadline, first.output()
            time.sleep(0.02)
        first.kill()  # parent and every thread: no goodbye
        killed_at = time.time()
        second = start_worker(app_config, tmp_path, "w2")
        final = ext.relay.wait(acc.message_id, 30)
        assert final is not None and final["type"] == "done", (final, second.output())
        assert time.time() - killed_at < 30
        record = ext.redis.hgetall(f"{ext.prefix}msg:{acc.message_id}")
        assert record["content"] == EXPECTED and record["attempt"] == "2"
        frames = [{"type": f["t"], "seq": int(i.split("-")[1]), **__import__("json").loads(f["d"])}
                  for i, f in ext.redis.xrange(f"{ext.prefix}ev:{acc.message_id}")]
        assert_gap_free(frames)
        assert text_of(frames) == EXPECTED
        assert ext.redis.zcard(f"{ext.prefix}conv:{acc.conversation_id}:msgs") == 2
    finally:
        first.kill()
        if second:
            second.kill()


def procfile() -> dict[str, str]:
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Procfile")) as f:
        return dict(line.split(": ", 1) for line in f.read().strip().splitlines())


def test_procfile_processes_serve_a_websocket_reply(ext, app_config, tmp_path):
    """The Procfile's own command lines, run through a shell as the platforms do."""
    port = free_port()
    env = env_for(app_config, PORT=port, WEB_CONCURRENCY=2)
    web = Proc(["/bin/sh", "-c", "exec " + procfile()["web"]], env, str(tmp_path / "web.log"))
    worker = Proc(["/bin/sh", "-c", "exec " + procfile()["worker"]], env, str(tmp_path / "worker.log"))
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=30)
        key = ext.users.create("procfile")[1]
        ws = WS(f"ws://127.0.0.1:{port}/ws", key)
        ws.send({"type": "send", "conversation_id": None, "content": "through gunicorn"})
        acc = ws.recv()
        frames = ws.reply_frames(acc["message_id"])
        assert frames[-1]["type"] == "done" and text_of(frames) == "Echo (assistant): through gunicorn"
        ws.close()
    finally:
        web.kill(15)
        worker.kill(15)


def test_users_cli_prints_key_on_last_line(ext, app_config):
    env = env_for(app_config)
    out = subprocess.run([FLASK, "--app", "wsgi", "users", "create", "carol", "--admin"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    user = ext.users.authenticate(key)
    assert user and user.name == "carol" and user.is_admin
    assert key not in out.stderr
    stored = ext.redis.keys(f"{ext.prefix}apikey:*")
    assert all(key not in k for k in stored)  # only the hash is stored
    dup = subprocess.run([FLASK, "--app", "wsgi", "users", "create", "carol"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert dup.returncode != 0 and "exists" in dup.stderr


def close_code(ws):
    """Read frames until the server's close frame; return its status code."""
    import struct

    import websocket as wsc

    ws.conn.settimeout(10)
    while True:
        opcode, data = ws.conn.recv_data(control_frame=True)
        if opcode == wsc.ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None


def test_sigterm_on_web_sends_1012_and_the_reply_resumes_on_another_web(ext, app_config, tmp_path):
    ports = [free_port(), free_port()]
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    webs = [Proc([gunicorn, "-c", "gunicorn.conf.py", "wsgi:app"], env_for(app_config, PORT=p, WEB_CONCURRENCY=1),
                  str(tmp_path / f"web{i}.log")) for i, p in enumerate(ports)]
    worker = start_worker(app_config, tmp_path, "worker")
    try:
        for p in ports:
            wait_http(f"http://127.0.0.1:{p}/readyz", timeout=30)
        key = ext.users.create("restarts")[1]
        ws = WS(f"ws://127.0.0.1:{ports[0]}/ws", key)
        ws.send({"type": "send", "conversation_id": None, "content": WORDS})
        mid = ws.recv()["message_id"]
        seen = ws.until(lambda f: f.get("type") == "delta" and f["seq"] >= 5)
        killed_at = time.time()
        webs[0].proc.send_signal(15)  # the deploy's SIGTERM to the old web process
        assert close_code(ws) == 1012 and time.time() - killed_at < 5
        again = WS(f"ws://127.0.0.1:{ports[1]}/ws", key)
        again.send({"type": "subscribe", "message_id": mid, "after_seq": seen[-1]["seq"]})
        rest = again.reply_frames(mid, timeout=30)
        assert rest[0]["seq"] == seen[-1]["seq"] + 1 and rest[-1]["type"] == "done"
        frames = [f for f in seen if f.get("message_id") == mid] + rest
        assert_gap_free(frames)
        assert text_of(frames) == EXPECTED
    finally:
        for w in webs:
            w.kill(15)
        worker.kill(15)
