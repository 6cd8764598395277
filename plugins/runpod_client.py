"""A small client for RunPod's serverless queue API (``/run``, ``/status``, ``/stream``, ``/cancel``).

Every request has a (connect, read) timeout and goes through ``plugins.http_retry.send``: 429, 5xx
and connection errors are retried with bounded, jittered backoff honouring ``Retry-After``;
400/401/404 never are. ``/run`` is retried only when the request surely did not arrive (connect
errors, 429) so a retry can never create a second billed job. Each ``JobCalls`` counts its API
calls, which the provider reports per job.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from chatapp.errors import ProviderError
from plugins.http_retry import RetryPolicy, Sent, Target, ThreadSessions, check, send, uncertain

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.runpod.ai/v2"
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})


@dataclass
class StreamPoll:
    """One ``/stream`` answer: the job status and the items produced since the previous call."""

    status: str
    items: list[Any] = field(default_factory=list)
    #: a failed earlier attempt of this call may have consumed items we never saw
    maybe_lost: bool = False
    #: seconds the call took (used to tell whether the server honoured ``wait``)
    elapsed: float = 0.0


class RunPodClient:
    """RunPod's queue API for one base URL and key. Thread-safe: sessions are per thread."""

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        retry: RetryPolicy | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        stream_read_margin: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key  # for the few calls outside a job (e.g. the emulator's billing ledger)
        self.retry = retry or RetryPolicy()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # The final /stream call (the status flip) can be slow on RunPod: give it room.
        self.stream_read_margin = stream_read_margin
        self.target = Target("RunPod", "RUNPOD_API_KEY", "RUNPOD_BASE_URL", secret=api_key)
        self._sessions = ThreadSessions({"Authorization": f"Bearer {api_key}"})
        self._lock = threading.Lock()
        self.api_calls = 0  # every HTTP request made, across all jobs

    def job(
        self, endpoint_id: str, *, stop: threading.Event | None = None, deadline: float | None = None
    ) -> "JobCalls":
        """A handle for one job attempt on ``endpoint_id``; counts its own calls."""
        return JobCalls(self, endpoint_id, stop, deadline)

    def _count(self) -> None:
        with self._lock:
            self.api_calls += 1


class JobCalls:
    """The calls of one job attempt against one endpoint. Not shared between threads."""

    def __init__(
        self,
        client: RunPodClient,
        endpoint_id: str,
        stop: threading.Event | None,
        deadline: float | None,
    ) -> None:
        self.client = client
        self.endpoint_id = endpoint_id
        self.stop = stop
        self.deadline = deadline
        self.calls = 0
        # cancel() runs on another thread than the job's own calls.
        self._lock = threading.Lock()

    def run(self, job_input: dict[str, Any], policy: dict[str, Any] | None = None) -> dict[str, Any]:
        """``POST /run``: submit a job; returns ``{"id", "status"}``."""
        body: dict[str, Any] = {"input": job_input}
        if policy:
            body["policy"] = policy
        sent = self._send("POST", "run", "/run", json=body, idempotent=False)
        if sent.response.status_code >= 500:
            sent.response.close()
            raise uncertain(self.client.target, f"/run ({self.endpoint_id})",
                            f"HTTP {sent.response.status_code}")
        self._check(sent, "/run", not_found=(
            f"RunPod endpoint '{self.endpoint_id}' was not found at {self.client.base_url}; check "
            "RUNPOD_ENDPOINT_ID (or the endpoint_id in RUNPOD_ENDPOINTS) and RUNPOD_BASE_URL."
        ))
        data = self._json(sent, "/run")
        if not data.get("id"):
            raise ProviderError(f"RunPod accepted /run but returned no job id: {str(data)[:200]}")
        return data

    def status(self, job_id: str, after_stop: bool = False) -> dict[str, Any] | None:
        """``GET /status/{id}``; None when RunPod does not know the job (404: expired or wrong).

        ``after_stop`` is for the billing read after a cancel: it must run although the stop
        event is set."""
        sent = self._send("GET", f"status/{quote(job_id, safe='')}", "/status", idempotent=True,
                          use_stop=not after_stop, max_attempts=3 if after_stop else None)
        if sent.response.status_code == 404:
            sent.response.close()
            return None
        self._check(sent, "/status")
        return self._json(sent, "/status")

    def stream(self, job_id: str, wait_ms: int | None = None) -> StreamPoll:
        """``GET /stream/{id}[?wait=ms]``: the status and the items produced since the last call."""
        params = {"wait": int(wait_ms)} if wait_ms else None
        read = (wait_ms or 0) / 1000 + self.client.stream_read_margin
        started = time.monotonic()
        sent = self._send("GET", f"stream/{quote(job_id, safe='')}", "/stream", params=params,
                          idempotent=True, read_timeout=read)
        self._check(sent, "/stream", not_found=expired_message(job_id))
        data = self._json(sent, "/stream")
        items = data.get("stream") or []
        if not isinstance(items, list):
            items = [items]
        return StreamPoll(
            status=str(data.get("status") or ""),
            items=items,
            maybe_lost=sent.maybe_processed,
            elapsed=time.monotonic() - started,
        )

    def cancel(self, job_id: str) -> None:
        """``POST /cancel/{id}``. Not tied to the stop event: it runs because of it."""
        sent = self._send("POST", f"cancel/{quote(job_id, safe='')}", "/cancel", idempotent=True,
                          use_stop=False, read_timeout=10.0, max_attempts=3)
        if sent.response.status_code == 404:
            sent.response.close()
            return  # already gone: nothing left to stop
        self._check(sent, "/cancel")
        sent.response.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        what: str,
        *,
        idempotent: bool,
        json: Any = None,
        params: dict[str, Any] | None = None,
        read_timeout: float | None = None,
        use_stop: bool = True,
        max_attempts: int | None = None,
    ) -> Sent:
        client = self.client
        url = f"{client.base_url}/{quote(self.endpoint_id, safe='')}/{path}"
        timeout = (client.connect_timeout, read_timeout or client.read_timeout)
        session = client._sessions.get()

        def do():
            return session.request(method, url, json=json, params=params, timeout=timeout)

        def counted() -> None:
            with self._lock:
                self.calls += 1
            client._count()

        policy = client.retry
        if max_attempts is not None:
            policy = RetryPolicy(max_attempts, policy.base_delay, policy.max_delay,
                                 policy.max_retry_after)
        return send(do, target=client.target, what=f"{what} ({self.endpoint_id})", policy=policy,
                    idempotent=idempotent, stop=self.stop if use_stop else None,
                    deadline=self.deadline if use_stop else None, on_attempt=counted)

    def _check(self, sent: Sent, what: str, not_found: str = "") -> None:
        if sent.response.status_code >= 400:
            try:
                check(sent.response, target=self.client.target, what=what, not_found=not_found)
            finally:
                sent.response.close()

    def _json(self, sent: Sent, what: str) -> dict[str, Any]:
        try:
            data = sent.response.json()
        except ValueError as exc:
            raise ProviderError(
                f"RunPod answered {what} with something that is not JSON "
                f"(HTTP {sent.response.status_code}); check RUNPOD_BASE_URL."
            ) from exc
        if not isinstance(data, dict):
            raise ProviderError(f"RunPod answered {what} with unexpected JSON: {str(data)[:200]}")
        return data


def expired_message(job_id: str) -> str:
    """The error text for a job RunPod no longer knows."""
    return (
        f"RunPod no longer knows job {job_id}: results are kept only 30 minutes after a job ends "
        "(or the job id is wrong). Regenerate the reply."
    )
