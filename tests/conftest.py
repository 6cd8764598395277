"""Fixtures: a real redis-server per session on a free loopback port in a temp dir, apps bound
to it with a fresh key prefix and queue per test, an in-thread pooled worker, and a live server.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from typing import Any, Iterator

import pytest
import redis

from chatapp.app import create_app

_counter = itertools.count()

#: fast leases so worker-death tests finish in seconds
FAST = {
    "LEASE_TTL_S": 1.5,
    "LEASE_RENEW_S": 0.2,
    "QUEUE_GRACE_S": 2.0,
    "WAIT_TIMEOUT_S": 10.0,
    "RELAY_BLOCK_MS": 200,
    # tests run the worker on the web app's own clients (production gives it its own process)
    "REDIS_MAX_CONNECTIONS": 30,
    # the offline, instant provider unless a test picks another
    "DEFAULT_PROVIDER": "echo",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server we own: started here, in its own temp dir, stopped at the end."""

    def __init__(self, binary: str, appendonly: bool = False) -> None:
        self.dir = tempfile.mkdtemp(prefix="chatapp-redis-")
        self.port = free_port()
        self.binary = binary
        self.appendonly = appendonly
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", "",
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
                "--maxmemory-policy", "noeviction"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.time() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary:
        return binary
    if os.environ.get("CI"):
        pytest.fail("redis-server is not installed, and CI must run the Redis tests (.ci/run installs it)")
    pytest.skip("redis-server is not installed: install it (e.g. apt-get install redis-server) to run this test")
    raise AssertionError  # unreachable


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(redis_binary())
    yield server
    server.cleanup()


@pytest.fixture()
def app_config(redis_server: RedisServer) -> dict[str, Any]:
    n = next(_counter)
    return {"TESTING": True, "REDIS_URL": redis_server.url, "KEY_PREFIX": f"t{n}:", "QUEUE_NAME": f"chat-t{n}",
            **FAST}


def make_app(config: dict[str, Any], extra_plugins: tuple = ()) -> Any:
    return create_app(config, extra_plugins=extra_plugins)


def close_app(application: Any) -> None:
    """Stop a test app's relay thread and close its Redis pools."""
    ext = application.extensions["chatapp"]
    ext.relay.stop()
    ext.clients.close()


@pytest.fixture()
def app(app_config: dict[str, Any]) -> Iterator[Any]:
    application = make_app(app_config)
    yield application
    close_app(application)


@pytest.fixture()
def ext(app: Any) -> Any:
    return app.extensions["chatapp"]


class InThreadWorker:
    """The production worker class and lease keeper, run in a thread of the test process."""

    def __init__(self, ext: Any, concurrency: int = 16) -> None:
        from workers.pool import ThreadPoolWorker
        from workers.services import WorkerServices

        self.services = WorkerServices(ext).start()
        self.keeper = self.services.keeper
        self.worker = ThreadPoolWorker(ext.queue.names, connection=ext.clients.raw,
                                       concurrency=concurrency, install_signals=False, worker_ttl=16,
                                       drain_timeout_s=5, idle=self.services.replies_idle)
        self.thread = threading.Thread(target=self.worker.work, kwargs={"logging_level": "WARNING"}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.worker.stop_soon()
        self.thread.join(timeout=15)
        self.services.stop()


@contextlib.contextmanager
def app_with_worker(config: dict[str, Any], extra_plugins: tuple = ()) -> Iterator[tuple[Any, Any]]:
    """An app with its own plugins and an in-thread worker, torn down afterwards."""
    application = make_app(config, extra_plugins)
    ext = application.extensions["chatapp"]
    running = InThreadWorker(ext)
    try:
        yield application, ext
    finally:
        running.stop()
        close_app(application)


@pytest.fixture()
def worker(ext: Any) -> Iterator[InThreadWorker]:
    w = InThreadWorker(ext)
    yield w
    w.stop()


@pytest.fixture()
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture()
def user_key(ext: Any) -> str:
    return ext.users.create(f"alice{next(_counter)}")[1]


@pytest.fixture()
def other_key(ext: Any) -> str:
    return ext.users.create(f"mallory{next(_counter)}")[1]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class LiveServer:
    def __init__(self, app: Any) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def live_server(app: Any) -> Iterator[LiveServer]:
    server = LiveServer(app)
    yield server
    server.stop()
