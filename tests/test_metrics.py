"""GET /metrics: web metrics (per process or multiprocess), worker metrics through Redis, the token."""
from __future__ import annotations

import os
import runpy
import subprocess
import sys
import time
import types
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from chatapp import Cost, ModelInfo, hookimpl
from chatapp.errors import ProviderError
from chatapp.models import Chunk
from plugins.echo import EchoProvider
from chatapp.app import create_app
from chatapp.metrics_redis import HOOK_SECONDS, RedisMetrics
from tests.conftest import LiveServer, app_with_worker, auth, close_app
from tests.wsclient import WS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: str) -> float | None:
    """The sum of the samples named ``name`` whose labels include ``labels`` (None: no such sample)."""
    found = [v for n, lab, v in samples(text) if n == name and all(lab.get(k) == w for k, w in labels.items())]
    return sum(found) if found else None


def scrape(app: Any, **headers: str) -> str:
    r = app.test_client().get("/metrics", headers=headers)
    assert r.status_code == 200, r.data
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return r.data.decode()


def scrape_until(app: Any, name: str, at_least: float = 1, timeout: float = 10, **labels: str) -> str:
    """Worker metrics reach Redis about once a second: scrape until ``name`` shows up."""
    deadline = time.time() + timeout
    while True:
        text = scrape(app)
        if (value(text, name, **labels) or 0) >= at_least:
            return text
        assert time.time() < deadline, f"{name}{labels} never reached {at_least}:\n{text}"
        time.sleep(0.1)


def priced(micros: int) -> types.ModuleType:
    module = types.ModuleType("test_metrics_pricing")
    module.price_generation = hookimpl(lambda request, result: Cost(micros))
    return module


def unreachable() -> redis.Redis:
    """A client of a port where nothing listens, failing at once (no retries)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0), decode_responses=True)


def chat(app: Any, key: str, message: str) -> dict[str, Any]:
    r = app.test_client().post("/api/v1/chat", json={"message": message}, headers=auth(key))
    assert r.status_code == 200, r.json
    return r.json


def test_replies_through_a_worker_show_up_on_metrics(app_config):
    with app_with_worker(app_config, (priced(1234),)) as (app, ext):
        user, key = ext.users.create("metrics-user")
        first = chat(app, key, "count me")
        assert first["cached"] is False
        # the cache stores the reply from the finisher, shortly after; then the same prompt hits
        deadline = time.time() + 10
        while not ext.redis.hget(ext.prefix + "cache:stats", "stores"):
            assert time.time() < deadline, "the reply was never stored in the cache"
            time.sleep(0.05)
        assert chat(app, key, "count me")["cached"] is True
        app.test_client().get("/api/v1/conversations/c_nope", headers=auth(key))  # a 404

        text = scrape_until(app, "chatapp_generations_total", outcome="done", provider="echo")
        text = scrape_until(app, "chatapp_cost_microdollars_total", at_least=1234, provider="echo")

        # web: requests by method, Flask rule and status; latency histogram with the same labels
        assert value(text, "chatapp_http_requests_total", method="POST", endpoint="/api/v1/chat", status="200") >= 2
        assert value(text, "chatapp_http_requests_total", endpoint="/api/v1/conversations/<cid>", status="404") == 1
        assert value(text, "chatapp_http_request_duration_seconds_count", method="POST", endpoint="/api/v1/chat") >= 2
        assert value(text, "chatapp_http_request_duration_seconds_bucket", endpoint="/api/v1/chat", le="+Inf") >= 2
        # cache lookups from the get_cached_reply hook: a miss first, then a hit
        assert value(text, "chatapp_cache_lookups_total", result="miss") == 1
        assert value(text, "chatapp_cache_lookups_total", result="hit") == 1
        # plugin hooks timed, in this process and per hook
        assert value(text, "chatapp_plugin_hook_duration_seconds_count", hook="get_cached_reply", process="web") >= 2
        assert value(text, "chatapp_plugin_hook_duration_seconds_count", hook="after_generation") >= 1
        # worker: one generation (the cache hit is not one), its first token and provider time
        assert value(text, "chatapp_generations_total", outcome="done", provider="echo") == 1
        assert value(text, "chatapp_time_to_first_token_seconds_count", provider="echo") == 1
        assert value(text, "chatapp_time_to_first_token_seconds_bucket", provider="echo", le="+Inf") == 1
        assert value(text, "chatapp_provider_duration_seconds_count", provider="echo") == 1
        assert value(text, "chatapp_cost_microdollars_total", provider="echo") == 1234
        # read from Redis at scrape time
        assert value(text, "chatapp_queue_depth", queue=app_config["QUEUE_NAME"]) == 0
        assert value(text, "chatapp_workers_live") >= 1
        assert value(text, "chatapp_metrics_redis_up") == 1
        # bounded labels: no ids, no keys, no raw paths
        for secret in (key, user.id, first["conversation_id"], first["message_id"], "c_nope"):
            assert secret not in text


class FailingProvider(EchoProvider):
    def stream(self, request, context):
        yield Chunk(status="generating")
        raise ProviderError("Upstream broke.", code="provider_error")


def providers_plugin() -> types.ModuleType:
    module = types.ModuleType("test_metrics_providers")
    module.register_providers = hookimpl(lambda config: [
        FailingProvider(id="boom", models=[ModelInfo("boom-1")], default_model="boom-1"),
        EchoProvider(id="slow", delay_s=0.3, models=[ModelInfo("slow-1")], default_model="slow-1"),
    ])
    return module


def test_failed_and_cancelled_generations_are_counted_by_outcome(app_config):
    with app_with_worker(app_config, (providers_plugin(),)) as (app, ext):
        _, key = ext.users.create("outcomes")
        client = app.test_client()
        for provider in ("boom", "slow"):
            conv = client.post("/api/v1/conversations", json={"provider": provider}, headers=auth(key)).json
            sent = client.post(f"/api/v1/conversations/{conv['id']}/messages",
                               json={"content": "one two three four five six"}, headers=auth(key)).json
            if provider == "slow":  # stop it once its first words are out
                mid = sent["message_id"]
                deadline = time.time() + 10
                while not client.get(f"/api/v1/conversations/{conv['id']}/messages/{mid}",
                                     headers=auth(key)).json["content"]:
                    assert time.time() < deadline
                    time.sleep(0.05)
                assert client.post(f"/api/v1/conversations/{conv['id']}/messages/{mid}/cancel",
                                   headers=auth(key)).status_code == 200
        scrape_until(app, "chatapp_generations_total", outcome="failed", provider="boom")
        text = scrape_until(app, "chatapp_generations_total", outcome="cancelled", provider="slow")
        assert value(text, "chatapp_generations_total", outcome="done") is None
        assert value(text, "chatapp_time_to_first_token_seconds_count", provider="slow") == 1
        assert value(text, "chatapp_time_to_first_token_seconds_count", provider="boom") is None  # no text


def test_websocket_gauge_and_frames(app):
    ext = app.extensions["chatapp"]
    _, key = ext.users.create("sockets")
    server = LiveServer(app)
    try:
        ws = WS(server.ws_url, key)
        ws.send({"type": "ping"})
        assert ws.recv()["type"] == "pong"
        # the server counts a frame out once its send returned, which can be after the client read it
        text = scrape_until(app, "chatapp_websocket_frames_total", direction="out")
        assert value(text, "chatapp_websockets_open") == 1
        assert value(text, "chatapp_websocket_frames_total", direction="in") == 1
        assert value(text, "chatapp_websocket_frames_total", direction="out") == 1
        ws.conn.close()
        deadline = time.time() + 5
        while value(scrape(app), "chatapp_websockets_open") != 0:
            assert time.time() < deadline
            time.sleep(0.05)
        assert value(text, "chatapp_http_requests_total", endpoint="/ws") is None  # still open then
    finally:
        server.stop()


def test_hook_errors_and_worker_process_hooks_through_redis(app_config):
    broken = types.ModuleType("test_metrics_broken_cache")

    def get_cached_reply(request):
        raise RuntimeError("cache plugin bug")

    broken.get_cached_reply = hookimpl(get_cached_reply)
    web = create_app(app_config, extra_plugins=(broken,))
    worker = create_app({**app_config, "PROCESS_ROLE": "worker"})
    try:
        _, key = web.extensions["chatapp"].users.create("hooks")
        r = web.test_client().post("/api/v1/conversations/c_x/messages", json={"content": "hi"}, headers=auth(key))
        assert r.status_code == 404  # the conversation check comes first: no hook ran
        conv = web.test_client().post("/api/v1/conversations", json={}, headers=auth(key)).json
        r = web.test_client().post(f"/api/v1/conversations/{conv['id']}/messages", json={"content": "hi"},
                                   headers=auth(key))
        assert r.status_code == 500 and r.json["error"]["code"] == "internal_error"
        wext = worker.extensions["chatapp"]
        assert wext.metrics.web is None  # a worker process keeps no web registry
        wext.pm.hook.register_personas(config=worker.config)
        wext.metrics.worker.flush()
        text = scrape(web)
        assert value(text, "chatapp_plugin_hook_errors_total", hook="get_cached_reply", process="web") == 1
        assert value(text, "chatapp_cache_lookups_total") is None  # a failed lookup is neither
        assert value(text, "chatapp_plugin_hook_duration_seconds_count", hook="register_personas",
                     process="worker") >= 1
        # one family per name even though two sources feed it
        assert text.count("# TYPE chatapp_plugin_hook_duration_seconds ") == 1
    finally:
        close_app(web)
        close_app(worker)


def test_a_refusal_is_not_a_hook_error(app_config):
    from chatapp.errors import BudgetExhausted

    refuse = types.ModuleType("test_metrics_refuse")

    def before_generation(request):
        raise BudgetExhausted("No budget.")

    refuse.before_generation = hookimpl(before_generation)
    app = create_app(app_config, extra_plugins=(refuse,))
    try:
        _, key = app.extensions["chatapp"].users.create("refused")
        r = app.test_client().post("/api/v1/chat", json={"message": "hi"}, headers=auth(key))
        assert r.status_code == 402
        text = scrape(app)
        assert value(text, "chatapp_plugin_hook_duration_seconds_count", hook="before_generation") == 1
        assert value(text, "chatapp_plugin_hook_errors_total", hook="before_generation") is None
    finally:
        close_app(app)


def test_endpoint_label_is_the_rule_never_the_path(client):
    for path in ("/api/v1/conversations/c_a", "/api/v1/conversations/c_b", "/no/such/page/123"):
        client.get(path)
    text = scrape(client.application)
    endpoints = {lab["endpoint"] for n, lab, _ in samples(text) if n == "chatapp_http_requests_total"}
    assert endpoints == {"/api/v1/conversations/<cid>", "unmatched"}
    assert "c_a" not in text and "/no/such" not in text


def test_metrics_token(app_config):
    app = create_app({**app_config, "METRICS_TOKEN": "m-secret-1"})
    try:
        client = app.test_client()
        r = client.get("/metrics")
        assert r.status_code == 401 and r.json["error"]["code"] == "invalid_metrics_token"
        assert client.get("/metrics", headers=auth("wrong")).status_code == 401
        r = client.get("/metrics", headers=auth("m-secret-1"))
        assert r.status_code == 200 and b"chatapp_http_requests_total" in r.data
        assert b"m-secret-1" not in r.data
    finally:
        close_app(app)


def test_metrics_need_no_key_by_default(client):
    assert client.get("/metrics").status_code == 200


def test_flush_keeps_counts_while_redis_is_down(app):
    ext = app.extensions["chatapp"]
    down = unreachable()
    recorder = RedisMetrics(down, ext.prefix)
    recorder.inc("chatapp_generations_total", outcome="failed", provider="echo")
    recorder.observe(HOOK_SECONDS, 0.003, hook="after_generation", process="worker")
    with pytest.raises(redis.RedisError):
        recorder.flush()
    recorder.inc("chatapp_generations_total", outcome="failed", provider="echo")
    recorder.redis = ext.redis
    assert recorder.flush() > 0
    assert recorder.flush() == 0  # nothing new
    text = scrape(app)
    assert value(text, "chatapp_generations_total", outcome="failed", provider="echo") == 2
    assert value(text, "chatapp_plugin_hook_duration_seconds_bucket", hook="after_generation", process="worker",
                 le="0.005") == 1
    assert value(text, "chatapp_plugin_hook_duration_seconds_bucket", hook="after_generation", process="worker",
                 le="0.0025") == 0
    assert value(text, "chatapp_plugin_hook_duration_seconds_sum", hook="after_generation",
                 process="worker") == pytest.approx(0.003)


def test_scrape_without_redis_says_so(app):
    ext = app.extensions["chatapp"]
    ext.metrics.ext = types.SimpleNamespace(redis=unreachable(), prefix=ext.prefix,
                                            config=ext.config, queue=ext.queue, live_workers=lambda: 0)
    text = scrape(app)
    assert value(text, "chatapp_metrics_redis_up") == 0
    assert "# TYPE chatapp_http_request_duration_seconds histogram" in text  # the web part is still there


# -- multiprocess mode (gunicorn) ---------------------------------------------------------------
CHILD = """
import sys
from chatapp.app import create_app
from chatapp import metrics
url, prefix, n, sockets = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
app = create_app({"TESTING": True, "REDIS_URL": url, "KEY_PREFIX": prefix})
client = app.test_client()
for _ in range(n):
    assert client.get("/healthz").status_code == 200
for _ in range(sockets):
    metrics.websocket_opened(app.extensions["chatapp"])
if n == 0:
    sys.stdout.write(client.get("/metrics").data.decode())
"""


def run_child(env: dict[str, str], url: str, prefix: str, n: int, sockets: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", CHILD, url, prefix, str(n), str(sockets)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_multiprocess_mode_adds_up_every_web_process(redis_server, tmp_path, monkeypatch):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": ROOT}
    prefix = f"mp{os.getpid()}:"
    run_child(env, redis_server.url, prefix, 2)
    run_child(env, redis_server.url, prefix, 3, sockets=1)
    text = run_child(env, redis_server.url, prefix, 0).stdout
    assert value(text, "chatapp_http_requests_total", endpoint="/healthz", status="200") == 5
    assert value(text, "chatapp_http_request_duration_seconds_count", endpoint="/healthz") == 5
    # livesum: the exited process's open socket still counts until gunicorn reports it dead
    assert value(text, "chatapp_websockets_open") == 1
    # gunicorn.conf.py's child_exit marks a dead worker's live gauges gone
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    conf = runpy.run_path(os.path.join(ROOT, "gunicorn.conf.py"))
    for name in os.listdir(tmp_path):
        if name.startswith("gauge_livesum_"):
            pid = int(name.rsplit("_", 1)[1].split(".")[0])
            conf["child_exit"](None, types.SimpleNamespace(pid=pid))
    text = run_child(env, redis_server.url, prefix, 0).stdout
    assert value(text, "chatapp_websockets_open") == 0
    assert value(text, "chatapp_http_requests_total", endpoint="/healthz") == 5  # counters stay


def test_gunicorn_conf_makes_a_fresh_directory_when_unset(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("_CHATAPP_PROMETHEUS_TMPDIR", raising=False)
    conf = runpy.run_path(os.path.join(ROOT, "gunicorn.conf.py"))
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    try:
        assert os.path.isdir(path) and not os.listdir(path)
        conf["on_starting"](None)
    finally:
        conf["on_exit"](None)
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        os.environ.pop("_CHATAPP_PROMETHEUS_TMPDIR", None)
    assert not os.path.exists(path)
