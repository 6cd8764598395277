"""Operational routes that need no key: liveness, readiness, plugins, metrics, the OpenAPI document."""
from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint, current_app, jsonify

from chatapp import metrics, openapi
from chatapp.plugin_manager import describe_plugins

bp = Blueprint("meta", __name__)


@bp.get("/healthz")
def healthz() -> Any:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Any:
    ext = current_app.extensions["chatapp"]
    checks: dict[str, Any] = {}
    try:
        ext.redis.ping()
        checks["redis"] = "ok"
        workers = ext.live_workers()
        checks["workers"] = workers
    except redis.RedisError as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
        workers = 0
    ready = checks["redis"] == "ok" and workers > 0
    return jsonify({"status": "ready" if ready else "not_ready", "checks": checks}), 200 if ready else 503


@bp.get("/-/plugins")
def plugins() -> Any:
    return jsonify({"items": describe_plugins(current_app.extensions["chatapp"].pm)})


@bp.get("/metrics")
def prometheus_metrics() -> Any:
    """Prometheus metrics of the web processes and, through Redis, the workers."""
    return metrics.metrics_response()


@bp.get("/openapi.json")
def openapi_document() -> Any:
    """The OpenAPI 3.1 description of the REST API, generated from the routes."""
    return jsonify(openapi.build_spec(current_app))
