"""The README's run command: one process, no Redis server or RunPod account required."""
from __future__ import annotations

import os
import re
import time

import pytest
import requests

from tests.conftest import free_port
from tests.processes import Proc, python, wait_http
from tests.wsclient import WS, text_of

pytestmark = pytest.mark.slow


def start_embedded(tmp_path, mode):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATAPP_", "RUNPOD_", "OPENAI_", "REDIS_"))}
    env.update({"CHATAPP_EMBEDDED_REDIS": mode, "CHATAPP_DATA_DIR": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"})
    proc = Proc(python("-m", "chatapp", "--port", str(port)), env, str(tmp_path / f"embedded-{mode}.log"))
    return proc, port


def read_key(proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        match = re.search(r"API key of the local demo user:\s+(\S+)", proc.output())
        if match:
            return match.group(1)
        time.sleep(0.1)
    raise AssertionError(proc.output())


@pytest.mark.parametrize("mode", ["memory", "server"])
def test_embedded_app_chats_out_of_the_box(tmp_path, mode):
    if mode == "server" and not __import__("shutil").which("redis-server"):
        pytest.skip("redis-server is not installed")
    proc, port = start_embedded(tmp_path, mode)
    try:
        key = read_key(proc)
        out = proc.output()
        has_page = os.path.exists(os.path.join(os.path.dirname(__file__), "..", "chatapp", "static", "index.html"))
        assert (f"http://127.0.0.1:{port}/#key={key}" in out) == has_page
        assert ("LOST when this process exits" in out) == (mode == "memory")
        wait_http(f"http://127.0.0.1:{port}/readyz")
        r = requests.post(f"http://127.0.0.1:{port}/api/v1/chat", json={"message": "Hello embedded"},
                          headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["message"]
        ws = WS(f"ws://127.0.0.1:{port}/ws", key)
        ws.send({"type": "send", "conversation_id": r.json()["conversation_id"], "content": "and over the socket"})
        acc = ws.recv()
        frames = ws.reply_frames(acc["message_id"], timeout=30)
        assert frames[-1]["type"] == "done" and text_of(frames)
        ws.close()
    finally:
        proc.kill(15)


def test_the_embedded_redis_server_keeps_message_hashes_compact(tmp_path):
    """Its hashes stay listpacks with values up to 1 KB, so a stored message with a few hundred
    bytes of content takes about half the memory it would at Redis's default."""
    import redis

    from chatapp.embedded import start_redis_server
    from tests.conftest import redis_binary

    url, proc = start_redis_server(redis_binary(), str(tmp_path / "data"))
    try:
        client = redis.Redis.from_url(url, decode_responses=True)
        client.hset("message", mapping={"role": "user", "content": "word " * 100, "meta": "{}"})
        assert client.object("encoding", "message") in ("listpack", "ziplist")  # Redis 7, 6.2
    finally:
        proc.terminate()
        proc.wait(10)
