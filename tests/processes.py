"""Run the project's real processes (web, worker, embedded app) as subprocesses in tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import requests

from chatapp.config import PLAIN_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env_for(config: dict[str, Any], **extra: Any) -> dict[str, str]:
    """Environment variables that give a subprocess the same settings as a test app."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATAPP_", "RUNPOD_", "OPENAI_"))}
    env["REDIS_URL"] = config["REDIS_URL"]
    for key, value in config.items():
        if key in PLAIN_ENV:
            env[key] = str(value)
        elif key != "TESTING":
            env[f"CHATAPP_{key}"] = str(value)
    env.update({k: str(v) for k, v in extra.items()})
    env["PYTHONUNBUFFERED"] = "1"
    # the venv's console scripts (gunicorn, flask) even when it is not activated
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log_path: str) -> None:
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()

    def output(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def wait_http(url: str, timeout: float = 20, status: int = 200) -> requests.Response:
    deadline = time.time() + timeout
    last: Any = None
    while time.time() < deadline:
        try:
            last = requests.get(url, timeout=2)
            if last.status_code == status:
                return last
        except requests.ConnectionError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{url} not {status} within {timeout}s: {last}")
