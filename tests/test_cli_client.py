"""``chatapp-cli``: the real console script, run as a subprocess (and through a pseudo-terminal for
``chat``) against a live loopback server with an in-thread worker and the echo provider."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Iterator

import pexpect
import pytest
import requests

from tests.conftest import FAST, LiveServer, app_with_worker, auth

CLI = os.path.join(os.path.dirname(sys.executable), "chatapp-cli")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Server:
    """The module's live server and app extension, with a fresh user (and key) per test."""

    def __init__(self, app: Any, ext: Any, live: LiveServer) -> None:
        self.app, self.ext, self.live = app, ext, live
        self.key = ext.users.create(f"cli{time.monotonic_ns()}")[1]

    def get(self, path: str) -> Any:
        resp = requests.get(self.live.url + path, headers=auth(self.key), timeout=10)
        resp.raise_for_status()
        return resp.json()

    def has_route(self, prefix: str) -> bool:
        return any(prefix in rule.rule for rule in self.app.url_map.iter_rules())

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATAPP_")}
        env.update({"CHATAPP_URL": self.live.url, "CHATAPP_API_KEY": self.key, "PYTHONUNBUFFERED": "1",
                    "TERM": "dumb", **extra})
        return env

    def echo_delay(self, seconds: float) -> None:
        # the worker runs in this process, on this catalog
        self.ext.catalog.providers["echo"].delay_s = seconds


@pytest.fixture(scope="module")
def live_app(redis_server: Any) -> Iterator[tuple[Any, Any, LiveServer]]:
    """One app, worker and server for the whole module: starting and draining them per test
    would cost more than the tests themselves. Tests stay apart by using a user each."""
    if not os.path.exists(CLI):
        pytest.fail(f"{CLI} is missing: run `.venv/bin/pip install -e .` to install the console script")
    n = f"cli{os.getpid()}x{time.monotonic_ns()}"
    config = {"TESTING": True, "REDIS_URL": redis_server.url, "KEY_PREFIX": f"{n}:", "QUEUE_NAME": f"chat-{n}",
              **FAST}
    with app_with_worker(config) as (app, ext):
        live = LiveServer(app)
        try:
            yield app, ext, live
        finally:
            live.stop()


@pytest.fixture()
def server(live_app: tuple[Any, Any, LiveServer]) -> Iterator[Server]:
    srv = Server(*live_app)
    yield srv
    srv.echo_delay(0)


def run_cli(server: Server | None, *args: str, env: dict[str, str] | None = None, stdin: str | None = None,
            timeout: float = 30) -> Any:
    return subprocess.run([CLI, *args], input=stdin, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=env if env is not None else server.env())  # type: ignore[union-attr]


def last_reply(server: Server) -> dict[str, Any]:
    conv = server.get("/api/v1/conversations")["items"][0]
    return [m for m in server.get(f"/api/v1/conversations/{conv['id']}/messages")["items"]
            if m["role"] == "assistant"][-1]


def wait_state(server: Server, cid: str, mid: str, states: tuple[str, ...], timeout: float = 10) -> dict[str, Any]:
    deadline = time.time() + timeout
    while True:
        msg = server.get(f"/api/v1/conversations/{cid}/messages/{mid}")
        if msg["state"] in states or time.time() > deadline:
            return msg
        time.sleep(0.1)


# -- send --------------------------------------------------------------------------------------------
def test_send_streams_the_stored_reply(server: Server) -> None:
    out = run_cli(server, "send", "Hello there")
    assert out.returncode == 0, out.stderr
    stored = last_reply(server)
    assert out.stdout == stored["content"] + "\n"
    assert stored["content"] == "Echo (assistant): Hello there"
    assert "[cost $0.000000 | cached no | tokens" in out.stderr
    assert server.key not in out.stdout + out.stderr


def test_send_json_and_continue_a_conversation(server: Server) -> None:
    first = run_cli(server, "send", "One", "--json", "--persona", "support-agent")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert set(data) == {"conversation_id", "message_id", "content", "state", "finish_reason", "cost_usd",
                         "cached", "usage"}
    assert data["state"] == "done" and data["finish_reason"] == "stop" and data["cached"] is False
    stored = server.get(f"/api/v1/conversations/{data['conversation_id']}/messages/{data['message_id']}")
    assert data["content"] == stored["content"] == "Echo (support-agent): One"
    assert data["usage"] == stored["usage"] and data["usage"]["output_tokens"] > 0

    second = run_cli(server, "send", "Two", "--conversation", data["conversation_id"], "--json")
    again = json.loads(second.stdout)
    assert again["conversation_id"] == data["conversation_id"] and again["content"].endswith("Two")
    assert server.get(f"/api/v1/conversations/{data['conversation_id']}")["message_count"] == 4


def test_send_bad_key_unknown_conversation_and_persona(server: Server) -> None:
    bad = run_cli(server, "send", "hi", env=server.env(CHATAPP_API_KEY="ck_wrong"))
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("error: ") and "(unauthorized)" in bad.stderr
    assert "ck_wrong" not in bad.stderr

    missing = run_cli(server, "send", "hi", "--conversation", "c_nope")
    assert missing.returncode == 1
    assert "error: " in missing.stderr and "(conversation_not_found)" in missing.stderr

    persona = run_cli(server, "send", "hi", "--persona", "no-such-persona", "--json")
    assert persona.returncode == 1 and "(unknown_persona)" in persona.stderr
    assert json.loads(persona.stdout)["state"] == "failed"


def test_send_ctrl_c_cancels_the_reply(server: Server) -> None:
    server.echo_delay(0.05)
    proc = subprocess.Popen([CLI, "send", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=server.env(), cwd=ROOT)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(" ".join(f"x{i}" for i in range(200)))
        proc.stdin.close()
        assert proc.stdout.read(len("Echo (assistant): x0 x1")) == "Echo (assistant): x0 x1"
        proc.send_signal(signal.SIGINT)
        proc.wait(15)
        out, errors = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    finally:
        proc.kill()
    assert proc.returncode == 130 and "[stopped]" in errors
    reply = last_reply(server)
    reply = wait_state(server, reply["conversation_id"], reply["id"], ("cancelled",))
    assert reply["state"] == "cancelled" and reply["content"].startswith("Echo (assistant): x0 x1" + out.rstrip("\n"))


def test_missing_key_and_unreachable_server(server: Server) -> None:
    env = server.env()
    del env["CHATAPP_API_KEY"]
    out = run_cli(None, "send", "hi", env=env)
    assert out.returncode == 2 and "CHATAPP_API_KEY" in out.stderr

    gone = "http://127.0.0.1:9"  # discard port: nothing listens there
    out = run_cli(None, "--url", gone, "send", "hi", env=server.env())
    assert out.returncode == 1
    assert gone in out.stderr and "(connection_failed)" in out.stderr and "Traceback" not in out.stderr


# -- batch -------------------------------------------------------------------------------------------
def test_batch_from_a_file(server: Server, tmp_path: Any) -> None:
    if not server.has_route("/api/v1/batch"):
        pytest.xfail("POST /api/v1/batch (chatapp/api/batch.py) is not registered yet")
    questions = tmp_path / "questions.txt"
    questions.write_text("What is 2+2?\n\n  Name a colour  \nLast one\n", encoding="utf-8")
    out = run_cli(server, "batch", str(questions), "--persona", "faq-bot")
    assert out.returncode == 0, out.stderr
    for n, q in enumerate(["What is 2+2?", "Name a colour", "Last one"], start=1):
        assert f"Q{n}: {q}\nA{n}: Echo (faq-bot): {q}\n" in out.stdout
    assert "3 questions: 3 answered, 0 failed" in out.stdout
    assert "total cost:" in out.stdout and "average per request:" in out.stdout
    assert "projected per 1,000 requests: $" in out.stdout
    assert "batch: 3/3 finished" in out.stderr  # no terminal: plain lines, no bar

    as_json = run_cli(server, "batch", "-", "--json", stdin="alpha\nbeta\n")
    data = json.loads(as_json.stdout)
    assert as_json.returncode == 0 and data["state"] == "done" and data["total"] == 2
    assert [i["content"] for i in data["items"]] == ["Echo (assistant): alpha", "Echo (assistant): beta"]
    assert "projected_per_1000_usd" in data

    # on a terminal, stderr gets a redrawn progress bar
    child = pexpect.spawn(CLI, ["batch", str(questions)], env=server.env(), cwd=ROOT, encoding="utf-8", timeout=15)
    child.expect_exact("[" + "#" * 30 + "] 3/3 finished")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


# -- chat (pseudo-terminal) --------------------------------------------------------------------------
def spawn_chat(server: Server, *args: str) -> Any:
    child = pexpect.spawn(CLI, ["chat", *args], env=server.env(), cwd=ROOT, encoding="utf-8", timeout=15,
                          dimensions=(40, 250))
    child.expect_exact("you> ")
    return child


def say(child: Any, text: str, reply: str) -> None:
    child.sendline(text)
    child.expect_exact(reply)
    child.expect_exact("[cost $")
    child.expect_exact("you> ")


def test_chat_commands_cancel_and_quit(server: Server, tmp_path: Any) -> None:
    child = spawn_chat(server)
    try:
        say(child, "first message", "Echo (assistant): first message")
        say(child, "second message", "Echo (assistant): second message")
        conv = server.get("/api/v1/conversations")["items"][0]
        assert conv["message_count"] == 4  # both went to one conversation

        child.sendline("/history")
        child.expect_exact(conv["id"])
        child.expect_exact("first message")  # the title
        child.expect_exact("you> ")

        child.sendline("/persona")
        child.expect_exact("support-agent")
        child.expect_exact("you> ")
        child.sendline("/persona nobody")
        child.expect_exact("(persona_not_found)")
        child.expect_exact("you> ")
        child.sendline("/persona faq-bot")
        child.expect_exact("Persona faq-bot")
        child.expect_exact("you> ")
        child.sendline("/new")
        child.expect_exact("New conversation")
        child.expect_exact("you> ")
        say(child, "third", "Echo (faq-bot): third")
        convs = server.get("/api/v1/conversations")["items"]
        assert len(convs) == 2 and convs[0]["persona"] == "faq-bot"

        child.sendline(f"/open {conv['id']}")
        child.expect_exact("you> second message")
        child.expect_exact("you> ")

        if server.has_route("/export"):
            target = tmp_path / "conv.json"
            child.sendline(f"/export json {target}")
            child.expect_exact(f"to {target}")
            child.expect_exact("you> ")
            exported = json.loads(target.read_text(encoding="utf-8"))
            assert "second message" in json.dumps(exported)

        # Ctrl-C mid-reply stops it; the session goes on
        server.echo_delay(0.05)
        child.sendline(" ".join(f"x{i}" for i in range(200)))
        child.expect_exact("Echo (assistant): x0 x1 x2")
        child.sendintr()
        child.expect_exact("[stopped]")
        child.expect_exact("you> ")
        cid = conv["id"]
        mid = server.get(f"/api/v1/conversations/{cid}/messages")["items"][-1]["id"]
        stopped = wait_state(server, cid, mid, ("cancelled",))
        assert stopped["state"] == "cancelled" and 0 < len(stopped["content"]) < 800
        server.echo_delay(0)
        say(child, "after the stop", "Echo (assistant): after the stop")

        # Ctrl-C at the prompt drops the half-typed line only
        child.send("half typed")
        time.sleep(0.2)
        child.sendintr()
        child.expect_exact("Ctrl-C again")
        child.expect_exact("you> ")
        time.sleep(1.1)  # not a double press
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert server.get(f"/api/v1/conversations/{cid}")["message_count"] == 8


def test_chat_resumes_after_socket_drop_and_double_ctrl_c_quits(server: Server) -> None:
    server.echo_delay(0.03)
    words = " ".join(f"w{i}" for i in range(120))
    child = spawn_chat(server)
    try:
        child.sendline(words)
        child.expect_exact("Echo (assistant): w0 w1 w2 w3")
        before = set(server.ext.sockets.sessions)
        server.ext.sockets.restart_all()  # the server closes the socket (1012) mid-reply
        child.expect_exact("[cost $")
        printed = "Echo (assistant): w0 w1 w2 w3" + child.before.replace("\r\n", "\n").rstrip("\n")
        child.expect_exact("you> ")
        reply = last_reply(server)
        assert reply["state"] == "done" and reply["content"] == f"Echo (assistant): {words}"
        # the rest of the reply came after the drop: each word once, none missing
        assert printed == reply["content"]
        after = set(server.ext.sockets.sessions)
        assert before and after and not before & after  # it did reconnect, on a new socket
        # two Ctrl-C at the prompt within a second quit (wait for the first to land: the
        # terminal merges two SIGINTs sent back to back into one)
        child.sendintr()
        child.expect_exact("Ctrl-C again")
        child.sendintr()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
