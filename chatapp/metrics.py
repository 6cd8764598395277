"""Prometheus metrics: ``GET /metrics`` on every web process.

Two sources, one page:

- **Web-process metrics** (HTTP requests and latency, open websockets, websocket frames, plugin
  hooks and cache lookups made in the web) live in prometheus_client objects. Under gunicorn,
  ``PROMETHEUS_MULTIPROC_DIR`` is set (``gunicorn.conf.py``) and they go through prometheus_client's
  multiprocess mode, so any worker answering the scrape reports all of them; without it (embedded
  app, tests) they live in this app's own registry.
- **Worker-side metrics** (generations, time to first token, provider time, cost, plugin hooks in
  workers) are flushed to Redis by each worker process (``chatapp.metrics_redis``) and read back
  here at scrape time, with the queue depth and live workers.

Labels stay bounded: ``endpoint`` is the Flask rule (``/api/v1/conversations/<cid>``), never the
raw path; no user ids, keys or message text anywhere. Optional ``CHATAPP_METRICS_TOKEN`` makes
``/metrics`` require ``Authorization: Bearer <token>``.
"""
from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from flask import Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import Metric

from chatapp.auth import bearer_token
from chatapp.errors import ChatAppError, Unauthorized
from chatapp.metrics_redis import (
    COST_MICROS, GENERATIONS, HOOK_BUCKETS, HOOK_ERRORS, HOOK_SECONDS, PROVIDER_SECONDS, TTFT_SECONDS,
    DEFINITIONS, RedisCollector, RedisMetrics,
)

if TYPE_CHECKING:  # pragma: no cover
    from chatapp.extension import ChatApp
    from chatapp.models import GenerationResult

log = logging.getLogger(__name__)

CACHE_LOOKUPS = "chatapp_cache_lookups_total"
HTTP_REQUESTS = "chatapp_http_requests_total"
HTTP_SECONDS = "chatapp_http_request_duration_seconds"
WEBSOCKETS_OPEN = "chatapp_websockets_open"
WEBSOCKET_FRAMES = "chatapp_websocket_frames_total"
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
#: a websocket's "request" lasts as long as the socket: not a latency worth a histogram
LONG_LIVED_RULES = frozenset({"/ws"})
#: the classic text format, which every Prometheus version (and our names) reads
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# ``*_created`` timestamps double the page and nothing here uses them
disable_created_metrics()


def multiprocess_dir() -> str | None:
    """prometheus_client's shared directory of the web processes, when there is one."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None


class WebMetrics:
    """The web process's own metrics, created once per app (after gunicorn forks its workers)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        hooks = DEFINITIONS[HOOK_SECONDS]
        self.metrics: dict[str, Any] = {
            HTTP_REQUESTS: Counter(HTTP_REQUESTS, "HTTP requests by method, route and status.",
                                   ["method", "endpoint", "status"], registry=reg),
            HTTP_SECONDS: Histogram(HTTP_SECONDS, "Seconds to answer an HTTP request, by method and route.",
                                    ["method", "endpoint"], buckets=HTTP_BUCKETS, registry=reg),
            WEBSOCKETS_OPEN: Gauge(WEBSOCKETS_OPEN, "Websockets open now.", registry=reg,
                                   multiprocess_mode="livesum"),
            WEBSOCKET_FRAMES: Counter(WEBSOCKET_FRAMES, "Websocket frames received (in) and sent (out).",
                                      ["direction"], registry=reg),
            CACHE_LOOKUPS: Counter(CACHE_LOOKUPS, "Response-cache lookups (get_cached_reply) by result.",
                                   ["result"], registry=reg),
            HOOK_SECONDS: Histogram(HOOK_SECONDS, hooks.help, list(hooks.labels), buckets=HOOK_BUCKETS, registry=reg),
            HOOK_ERRORS: Counter(HOOK_ERRORS, DEFINITIONS[HOOK_ERRORS].help, list(DEFINITIONS[HOOK_ERRORS].labels),
                                 registry=reg),
        }

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        """Add to a counter (or gauge: a negative amount subtracts)."""
        metric = self.metrics[name]
        (metric.labels(**labels) if labels else metric).inc(amount)

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation of a histogram."""
        metric = self.metrics[name]
        (metric.labels(**labels) if labels else metric).observe(value)


class AppMetrics:
    """What one process records into: ``web`` (web processes only) and ``worker`` (Redis-bound)."""

    def __init__(self, ext: "ChatApp", role: str) -> None:
        self.ext, self.role = ext, role
        self.worker = RedisMetrics(ext.redis, ext.prefix)
        self.web = WebMetrics() if role != "worker" else None
        #: hooks and cache lookups go where this process's metrics are exposed from
        self.sink: Any = self.web if self.web is not None else self.worker

    def exposition(self) -> bytes:
        """The text of ``/metrics``: this process's (or all web processes') metrics, then Redis's."""
        ext = self.ext
        sources: list[Any] = []
        path = multiprocess_dir()
        if path and os.path.isdir(path):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=path)
            sources.append(registry)
        elif self.web is not None:
            sources.append(self.web.registry)
        queues = list(getattr(ext.queue, "names", None) or [ext.config["QUEUE_NAME"]])
        sources.append(RedisCollector(ext.redis, ext.prefix, queues, ext.live_workers))
        return generate_latest(MergedCollector(sources))  # type: ignore[arg-type]


class MergedCollector:
    """Chains collectors, merging families that share a name (the hook metrics come both from this
    web process and, with ``process="worker"``, from Redis): one ``# TYPE`` line per family."""

    def __init__(self, sources: Iterable[Any]) -> None:
        self.sources = list(sources)

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for source in self.sources:
            for family in source.collect():
                seen = families.get(family.name)
                if seen is None:
                    families[family.name] = family
                elif seen.type == family.type:
                    seen.samples.extend(family.samples)
        yield from families.values()


def get(ext: Any) -> AppMetrics | None:
    """The process's metrics, or None for an extension built without ``init_app``."""
    return getattr(ext, "metrics", None)


# -- recording points (one call each at the places that know) ----------------------------------
def websocket_opened(ext: Any, delta: int = 1) -> None:
    """A websocket opened (``delta=-1``: closed)."""
    metrics = get(ext)
    if metrics is not None and metrics.web is not None:
        metrics.web.inc(WEBSOCKETS_OPEN, delta)


def websocket_frame(ext: Any, direction: str) -> None:
    """One frame received (``"in"``) or sent (``"out"``)."""
    metrics = get(ext)
    if metrics is not None and metrics.web is not None:
        metrics.web.inc(WEBSOCKET_FRAMES, direction=direction)


def reply_finished(ext: Any, fields: dict[str, str], result: "GenerationResult") -> None:
    """Count a finished reply once (from the finisher): outcome, time to first token, provider
    time and cost. ``fields`` is its outbox entry, whose ``r.created_at`` is when the user sent."""
    metrics = get(ext)
    if metrics is None or result.cached:  # cache hits are counted as lookups, not generations
        return
    try:
        sink, provider = metrics.worker, result.provider or "unknown"
        sink.inc(GENERATIONS, outcome=result.state, provider=provider)
        created_ms = fields.get("r.created_at")
        if result.first_token_at and created_ms:
            sink.observe(TTFT_SECONDS, max(0.0, result.first_token_at - int(created_ms) / 1000), provider=provider)
        if result.started_at and result.finished_at and result.finished_at >= result.started_at:
            sink.observe(PROVIDER_SECONDS, result.finished_at - result.started_at, provider=provider)
        if result.cost and result.cost.micros:
            sink.inc(COST_MICROS, int(result.cost.micros), provider=provider)
    except Exception:  # metrics never break the finisher
        log.exception("metrics: could not record reply %s", result.message_id)


# -- plugin hooks --------------------------------------------------------------------------------
def monitor_hooks(pm: Any, metrics: AppMetrics) -> Any:
    """Time every plugin hook call and count its errors (and the cache's hits and misses), via
    pluggy's ``add_hookcall_monitoring``. Returns pluggy's undo function."""
    local = threading.local()  # hooks may call hooks: a stack of start times per thread/greenlet
    process = "worker" if metrics.role == "worker" else "web"

    def before(hook_name: str, hook_impls: Any, kwargs: Any) -> None:
        stack = getattr(local, "stack", None)
        if stack is None:
            stack = local.stack = []
        stack.append(time.perf_counter())

    def after(outcome: Any, hook_name: str, hook_impls: Any, kwargs: Any) -> None:
        try:
            elapsed = time.perf_counter() - local.stack.pop()
            sink = metrics.sink
            sink.observe(HOOK_SECONDS, elapsed, hook=hook_name, process=process)
            error = outcome.exception
            if error is not None and not isinstance(error, ChatAppError):
                sink.inc(HOOK_ERRORS, hook=hook_name, process=process)
            if hook_name == "get_cached_reply" and error is None:
                sink.inc(CACHE_LOOKUPS, result="miss" if outcome.get_result() is None else "hit")
        except Exception:  # metrics never break a hook call
            log.debug("hook metrics failed", exc_info=True)

    return pm.add_hookcall_monitoring(before, after)


# -- Flask ---------------------------------------------------------------------------------------
def init_app(app: Flask) -> AppMetrics:
    """Create the process's metrics, monitor its plugin hooks and, in a web process, time requests."""
    ext = app.extensions["chatapp"]
    metrics = AppMetrics(ext, str(app.config.get("PROCESS_ROLE", "web")))
    ext.metrics = metrics
    monitor_hooks(ext.pm, metrics)
    web = metrics.web
    if web is None:
        return metrics

    @app.before_request
    def start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def record_request(response: Response) -> Response:
        try:
            rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
            method = request.method if request.method in METHODS else "other"
            web.inc(HTTP_REQUESTS, method=method, endpoint=rule, status=str(response.status_code))
            started = g.get("metrics_started")
            if started is not None and rule not in LONG_LIVED_RULES:
                web.observe(HTTP_SECONDS, time.perf_counter() - started, method=method, endpoint=rule)
        except Exception:
            log.debug("request metrics failed", exc_info=True)
        return response

    return metrics


def metrics_response() -> Response:
    """The ``/metrics`` page; 401 without the bearer token when ``METRICS_TOKEN`` is set."""
    token = current_app.config.get("METRICS_TOKEN")
    if token:
        given = bearer_token() or ""
        if not hmac.compare_digest(given.encode(), str(token).encode()):
            raise Unauthorized("Send the metrics token as 'Authorization: Bearer <token>' (CHATAPP_METRICS_TOKEN).",
                               code="invalid_metrics_token")
    metrics = get(current_app.extensions["chatapp"])
    body = metrics.exposition() if metrics is not None else b""
    return Response(body, content_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})
