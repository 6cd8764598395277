"""The embedded default: one process with Redis, a worker and a provider, for a machine that has
only Python (``python -m chatapp``).

Redis: ``REDIS_URL`` if set; else a ``redis-server`` from PATH with its data in
``CHATAPP_DATA_DIR`` (kept across restarts); else fakeredis in memory (lost on exit). Provider:
RunPod or OpenAI when configured; else the bundled RunPod emulator through the RunPod provider.
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable

from chatapp.config import BUNDLED_ENDPOINT_ID, DEFAULTS, as_bool, provider_configured
from chatapp.redis_client import RedisClients, connect, connect_fake

log = logging.getLogger("chatapp.embedded")


@dataclass
class EmbeddedRedis:
    """How to reach the embedded Redis: ``connect(max_connections)`` gives a fresh set of clients,
    so the in-process worker has its own pools (its blocking dequeue must not starve the web)."""

    connect: Callable[[int], RedisClients]
    description: str
    durable: bool
    stop: Callable[[], None] = lambda: None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_redis_server(binary: str, data_dir: str) -> tuple[str, subprocess.Popen]:
    """A private redis-server on a free loopback port, AOF everysec in ``data_dir``. Hash values
    up to 1 KB keep a hash compact (a listpack): at Redis's default of 64 bytes, a message whose
    content or metadata is longer becomes a hash table, nearly twice the memory (benchmarks.md).
    The option's older name, ``ziplist``, is the one Redis 6.2 knows too."""
    os.makedirs(data_dir, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", os.path.abspath(data_dir),
         "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--maxmemory-policy", "noeviction",
         "--hash-max-ziplist-value", "1024", "--logfile", "redis.log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    probe = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            probe.ping()
            return url, proc
        except redis.ConnectionError:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {data_dir}/redis.log") from None
            time.sleep(0.05)
    proc.terminate()
    raise RuntimeError("redis-server did not start within 5 s")


def embedded_redis(data_dir: str) -> EmbeddedRedis:
    """``CHATAPP_EMBEDDED_REDIS`` = auto (default), server (require redis-server) or memory (fakeredis)."""
    url = os.environ.get("REDIS_URL")
    if url:
        return EmbeddedRedis(lambda size: connect(url, size), "Redis at REDIS_URL", durable=True)
    choice = os.environ.get("CHATAPP_EMBEDDED_REDIS", "auto")
    binary = shutil.which("redis-server") if choice in ("auto", "server") else None
    if choice == "server" and not binary:
        raise RuntimeError("CHATAPP_EMBEDDED_REDIS=server but no redis-server is on PATH")
    if binary:
        url, proc = start_redis_server(binary, data_dir)

        def stop() -> None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()

        atexit.register(stop)
        return EmbeddedRedis(lambda size: connect(url, size),
                             f"a private redis-server ({url}), data in {os.path.abspath(data_dir)}",
                             durable=True, stop=stop)
    import fakeredis

    server = fakeredis.FakeServer()
    why = "CHATAPP_EMBEDDED_REDIS=memory" if choice == "memory" else "no redis-server on PATH"
    return EmbeddedRedis(lambda size: connect_fake(server), f"in-memory fakeredis ({why})", durable=False)


def start_bundled_emulator() -> tuple[dict[str, Any], Callable[[], None], str]:
    """Start the bundled RunPod emulator in this process when no provider is configured.

    Returns the settings that point the ``runpod`` provider at it (empty when a real provider is
    configured or ``CHATAPP_BUNDLED_EMULATOR=false``), a stop function, and a description to log.
    """
    if provider_configured(os.environ):
        return {}, lambda: None, "the configured provider"
    if not as_bool(os.environ.get("CHATAPP_BUNDLED_EMULATOR")):
        return {}, lambda: None, "no provider (CHATAPP_BUNDLED_EMULATOR=false)"
    import secrets

    from chatapp.runpod_emulator import EmulatorConfig, EmulatorServer

    key = secrets.token_urlsafe(16)
    server = EmulatorServer(EmulatorConfig(), host="127.0.0.1", port=0, api_key=key)
    server.start()
    settings = {"RUNPOD_API_KEY": key, "RUNPOD_ENDPOINT_ID": BUNDLED_ENDPOINT_ID, "RUNPOD_BASE_URL": server.base_url,
                "RUNPOD_GPU": "L4"}
    return settings, server.stop, f"the bundled RunPod emulator at {server.base_url} (not a language model)"


def start_worker(ext: Any, concurrency: int) -> Callable[[], None]:
    """The in-process worker: a pooled RQ worker in a thread, plus its lease keeper. ``ext`` is
    the worker's own app state (its own Redis pools), as in a separate worker process."""
    from workers.pool import ThreadPoolWorker
    from workers.services import WorkerServices

    services = WorkerServices(ext).start()
    worker = ThreadPoolWorker(ext.queue.names, connection=ext.clients.raw, concurrency=concurrency,
                              install_signals=False, worker_ttl=16)
    thread = threading.Thread(target=worker.work, kwargs={"logging_level": "WARNING"}, name="chatapp-worker",
                              daemon=True)
    thread.start()

    def stop() -> None:
        worker.stop_soon()
        thread.join(timeout=10)
        services.stop()

    return stop


def demo_key(ext: Any, name: str = "demo") -> str:
    """A fresh key for the local demo user (keys are stored hashed, so old ones cannot be shown)."""
    user = ext.users.by_name(name)
    if user is None:
        return ext.users.create(name, admin=True)[1]
    return ext.users.new_key(user.id)


def serve(host: str, port: int) -> None:
    """Run the all-in-one app until interrupted."""
    from werkzeug.serving import make_server

    from chatapp.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    data_dir = os.environ.get("CHATAPP_DATA_DIR", ".chatapp-data")
    store = embedded_redis(data_dir)
    provider_settings, stop_emulator, provider_text = start_bundled_emulator()
    # a person reads this terminal: plain text unless asked otherwise
    provider_settings.setdefault("LOG_FORMAT", os.environ.get("CHATAPP_LOG_FORMAT", "text"))
    app = create_app(provider_settings, redis_clients=store.connect(int(DEFAULTS["REDIS_MAX_CONNECTIONS"])))
    ext = app.extensions["chatapp"]
    worker_app = create_app({**provider_settings, "PROCESS_ROLE": "worker"},
                            redis_clients=store.connect(int(app.config["WORKER_REDIS_MAX_CONNECTIONS"])))
    stop_worker = start_worker(worker_app.extensions["chatapp"], int(app.config["WORKER_CONCURRENCY"]))
    key = demo_key(ext)
    server = make_server(host, port, app, threaded=True)
    url = f"http://{host}:{server.server_port}"
    log.info("storage: %s", store.description)
    log.info("data %s", "survives a restart" if store.durable else "is LOST when this process exits")
    log.info("provider: %s (default provider: %s)", provider_text, ext.catalog.default_provider)
    page = (f"  web page (signs in the demo user): {url}/#key={key}\n"
            if (resources.files("chatapp") / "static" / "index.html").is_file() else "")
    print(f"\nchatapp is running at {url}\n{page}"
          f"  API key of the local demo user:    {key}\n"
          f"  try: curl -s -X POST {url}/api/v1/chat -H 'Authorization: Bearer {key}' "
          f"-H 'Content-Type: application/json' -d '{{\"message\": \"Hello!\"}}'\n", flush=True)
    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds into the finally below: atexit does not run on SIGTERM

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        stop_worker()
        stop_emulator()
        store.stop()
