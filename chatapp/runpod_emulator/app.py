"""HTTP routes of the emulator: RunPod's queue API under ``/v2/<endpoint_id>/``.

Plus the OpenAI-compatible route RunPod puts in front of vLLM workers, and one route of our own,
``GET /v2/<endpoint_id>/billing``, which RunPod does not have.
"""
from __future__ import annotations

import hmac
import json
import math
import socket
import time
from typing import Any, Iterator

from flask import Flask, Response, jsonify, request

from chatapp.runpod_emulator.emulator import Emulator, NotRetryable
from chatapp.runpod_emulator.faults import Fault
from chatapp.runpod_emulator.jobs import COMPLETED, TERMINAL, Job
from chatapp.runpod_emulator.model import OPENAI_CHAT_ROUTE
from chatapp.runpod_emulator.submission import BadRequest, parse_submission

PREFIX = "/v2/<endpoint_id>"
# Flask view name -> route class used for rate limits and fault targeting.
ROUTE_CLASS = {
    "run": "run", "runsync": "runsync", "status": "status", "stream": "stream",
    "cancel": "cancel", "retry": "retry", "purge_queue": "purge_queue", "health": "health",
    "openai_chat": "openai", "openai_models": "openai",
}
MAX_WAIT_MS = 300_000


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    resp = jsonify({"error": message})
    resp.status_code = status
    resp.headers.update(headers or {})
    return resp


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter clamped to [low, high]; bad values fall back to `default`."""
    try:
        value = int(request.args.get(name, default))
    except ValueError:
        value = default
    return min(max(value, low), high)


def _drop_connection() -> Response:
    """Close the TCP connection with no response (the client sees a reset/remote disconnect)."""
    sock = request.environ.get("werkzeug.socket")
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    # Never delivered: writing to the shut socket fails and werkzeug drops it silently.
    return Response(status=500)


def _fault_response(fault: Fault) -> Response:
    if fault.name == "rate_limit_burst":
        retry_after = str(max(1, math.ceil(float(fault.params.get("retry_after", 1)))))
        return _error(429, "rate limit exceeded (emulated)", {"Retry-After": retry_after})
    if fault.name == "drop_connection":
        return _drop_connection()
    return _error(500, "Internal Server Error (emulated)")


def create_app(emulator: Emulator, api_key: str | None) -> Flask:
    """The Flask app serving `emulator`. `api_key` None accepts any key."""
    app = Flask("chatapp.runpod_emulator")
    app.json.sort_keys = False

    def authorized() -> bool:
        if api_key is None:
            return True
        header = request.headers.get("Authorization", "").strip()
        token = header[7:].strip() if header[:7].lower() == "bearer " else header
        return hmac.compare_digest(token.encode(), api_key.encode())

    @app.before_request
    def guard() -> Response | None:
        """Auth, unknown endpoint, armed HTTP faults, then rate limits: in RunPod's order."""
        view_args = request.view_args or {}
        endpoint_id = view_args.get("endpoint_id")
        if request.endpoint is None or endpoint_id is None:
            return None
        if not authorized():
            return _error(401, "Unauthorized")
        if emulator.pool(endpoint_id) is None:
            return _error(404, f"endpoint {endpoint_id} not found")
        route = ROUTE_CLASS.get(request.endpoint)
        if route is None:  # billing: ours, never faulted or limited
            return None
        fault = emulator.take_http_fault(endpoint_id, view_args.get("job_id"), route)
        if fault is not None:
            return _fault_response(fault)
        wait_s = emulator.check_rate(endpoint_id, route)
        if wait_s is not None:
            return _error(429, "rate limit exceeded", {"Retry-After": str(math.ceil(wait_s))})
        return None

    def submit(endpoint_id: str, sync: bool, raw: bytes | None = None) -> Job | Response:
        cfg = emulator.pool(endpoint_id).cfg
        limit = cfg.max_sync_payload_bytes if sync else cfg.max_payload_bytes
        if raw is None:
            if (request.content_length or 0) > limit:
                return _error(400, f"payload too large: limit {limit} bytes")
            raw = request.get_data(cache=False)
        try:
            sub = parse_submission(raw, cfg, sync)
        except BadRequest as exc:
            return _error(400, str(exc))
        if emulator.queue_full(endpoint_id):
            return _error(429, "queue is full", {"Retry-After": "1"})
        return emulator.submit(endpoint_id, sub, sync)

    def live_job(endpoint_id: str, job_id: str) -> Job | Response:
        job = emulator.job(endpoint_id, job_id)
        return job if job is not None else _error(404, "request does not exist")

    @app.post(f"{PREFIX}/run")
    def run(endpoint_id: str) -> Any:
        job = submit(endpoint_id, sync=False)
        if isinstance(job, Response):
            return job
        return jsonify({"id": job.id, "status": "IN_QUEUE"})

    @app.post(f"{PREFIX}/runsync")
    def runsync(endpoint_id: str) -> Any:
        wait_ms = _int_arg("wait", 90_000, 1_000, MAX_WAIT_MS)
        job = submit(endpoint_id, sync=True)
        if isinstance(job, Response):
            return job
        envelope = emulator.wait_done(job, wait_ms / 1000)
        if envelope["status"] in TERMINAL:
            return jsonify(envelope)
        return jsonify({"id": job.id, "status": envelope["status"]})

    @app.route(f"{PREFIX}/status/<job_id>", methods=["GET", "POST"])
    def status(endpoint_id: str, job_id: str) -> Any:
        job = live_job(endpoint_id, job_id)
        return job if isinstance(job, Response) else jsonify(emulator.status(job))

    @app.route(f"{PREFIX}/stream/<job_id>", methods=["GET", "POST"])
    def stream(endpoint_id: str, job_id: str) -> Any:
        job = live_job(endpoint_id, job_id)
        if isinstance(job, Response):
            return job
        wait_ms = 0
        if emulator.pool(endpoint_id).cfg.honor_stream_wait:
            wait_ms = _int_arg("wait", 0, 0, MAX_WAIT_MS)
        body = emulator.read_stream(job, wait_ms / 1000)
        return _error(404, "request does not exist") if body is None else jsonify(body)

    @app.post(f"{PREFIX}/cancel/<job_id>")
    def cancel(endpoint_id: str, job_id: str) -> Any:
        job = live_job(endpoint_id, job_id)
        return job if isinstance(job, Response) else jsonify(emulator.cancel(job))

    @app.post(f"{PREFIX}/retry/<job_id>")
    def retry(endpoint_id: str, job_id: str) -> Any:
        job = live_job(endpoint_id, job_id)
        if isinstance(job, Response):
            return job
        try:
            return jsonify(emulator.retry(job))
        except NotRetryable as exc:
            return _error(400, str(exc))

    @app.post(f"{PREFIX}/purge-queue")
    def purge_queue(endpoint_id: str) -> Any:
        return jsonify(emulator.purge_queue(endpoint_id))

    @app.get(f"{PREFIX}/health")
    def health(endpoint_id: str) -> Any:
        return jsonify(emulator.health(endpoint_id))

    @app.get(f"{PREFIX}/billing")
    def billing(endpoint_id: str) -> Any:
        settle = request.args.get("settle", "").lower() in ("1", "true", "yes")
        return jsonify(emulator.billing(endpoint_id, settle=settle))

    @app.get(f"{PREFIX}/openai/v1/models")
    def openai_models(endpoint_id: str) -> Any:
        name = emulator.pool(endpoint_id).cfg.model_name
        return jsonify({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "runpod-emulator"}]})

    @app.post(f"{PREFIX}/openai/v1/chat/completions")
    def openai_chat(endpoint_id: str) -> Any:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _openai_error(400, "body must be a JSON object with a 'messages' list")
        wrapped = {"input": {"openai_route": OPENAI_CHAT_ROUTE, "openai_input": body}}
        job = submit(endpoint_id, sync=True, raw=json.dumps(wrapped).encode())
        if isinstance(job, Response):
            return job
        if body.get("stream"):
            return Response(_relay_sse(emulator, job), mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache"})
        envelope = emulator.wait_done(job, job.execution_timeout_s + 5)
        output = envelope.get("output")
        if envelope["status"] == COMPLETED and output:
            return jsonify(output[0])
        return _openai_error(500, envelope.get("error") or f"job ended {envelope['status']}")

    @app.errorhandler(404)
    def not_found(_exc: Exception) -> Response:
        return _error(404, "not found")

    @app.errorhandler(405)
    def not_allowed(_exc: Exception) -> Response:
        return _error(405, "method not allowed")

    return app


def _openai_error(status: int, message: str) -> Response:
    resp = jsonify({"error": {"message": message, "type": "BadRequestError" if status == 400
                              else "InternalServerError", "param": None, "code": status}})
    resp.status_code = status
    return resp


def _relay_sse(emulator: Emulator, job: Job) -> Iterator[str]:
    """Relay the job's SSE text as it is produced, like RunPod's OpenAI route does."""
    pos = 0
    deadline = time.monotonic() + job.execution_timeout_s + 5
    while time.monotonic() < deadline:
        items, status = emulator.read_items_after(job, pos, min(15.0, deadline - time.monotonic()))
        pos += len(items)
        for item in items:
            yield item if isinstance(item, str) else f"data: {json.dumps(item)}\n\n"
        if status in TERMINAL:
            if status != COMPLETED:
                error = {"message": emulator.status(job).get("error") or f"job {status}",
                         "type": "InternalServerError", "code": 500}
                yield f"data: {json.dumps({'error': error})}\n\n"
            return
        if job.deleted or emulator.closed:
            return
