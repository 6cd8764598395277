"""The RunPod Serverless provider (``id="runpod"``): vLLM workers behind RunPod's queue API.

Configuration (see docs/providers.md): ``RUNPOD_API_KEY``, ``RUNPOD_ENDPOINT_ID`` and/or
``RUNPOD_ENDPOINTS``, ``RUNPOD_BASE_URL``, ``RUNPOD_GPU`` or ``RUNPOD_PRICE_PER_SECOND``,
``RUNPOD_EXECUTION_TIMEOUT_S``, ``RUNPOD_STALL_TIMEOUT_S``. The job protocol lives in
``plugins.runpod_job``, HTTP in ``plugins.runpod_client``, output formats in
``plugins.runpod_formats``.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from chatapp.errors import InvalidRequest, ProviderTimeout
from chatapp.hookspecs import hookimpl
from chatapp.models import (
    ChatRequest,
    Chunk,
    Cost,
    GenerationContext,
    GenerationResult,
    ModelInfo,
    Provider,
)
from plugins.runpod_client import DEFAULT_BASE_URL, RunPodClient
from plugins.runpod_job import JobRunner, PollPolicy

log = logging.getLogger(__name__)

#: RunPod flex (serverless) price per second in USD by GPU class, from the published table
#: valid 2025-05 to 2026-05. Keys are normalised by ``_gpu_key``; RunPod's pool ids work too.
GPU_PRICE_PER_SECOND: dict[str, float] = {
    "A4000": 0.00016, "A4500": 0.00016, "4000ADA": 0.00016, "AMPERE16": 0.00016,
    "L4": 0.00019, "A5000": 0.00019, "3090": 0.00019, "AMPERE24": 0.00019,
    "4090": 0.00031, "ADA24": 0.00031,
    "A6000": 0.00034, "A40": 0.00034, "AMPERE48": 0.00034,
    "L40": 0.00053, "L40S": 0.00053, "6000ADA": 0.00053, "ADA48": 0.00053,
    "A100": 0.00076, "AMPERE80": 0.00076,
    "H100": 0.00116, "ADA80": 0.00116, "HOPPER80": 0.00116,
    "H200": 0.00155, "HOPPER141": 0.00155,
}

DEFAULT_STALL_TIMEOUT_S = 60.0
MIN_EXECUTION_TIMEOUT_MS = 5_000  # RunPod answers 400 to a smaller policy.executionTimeout


def _gpu_key(name: str) -> str:
    key = name.upper()
    for noise in ("NVIDIA", "GEFORCE", "RTX", "PRO", "_", "-", " "):
        key = key.replace(noise, "")
    return key


def gpu_price(name: str | None) -> float | None:
    """Flex USD per second for a GPU class name ("L4", "RTX 4090", "A100 80GB", "ADA_24"...)."""
    if not name:
        return None
    key = _gpu_key(name)
    if key in GPU_PRICE_PER_SECOND:
        return GPU_PRICE_PER_SECOND[key]
    for suffix in ("80GB", "40GB", "48GB", "24GB", "16GB", "141GB", "SXM", "PCIE", "NVL"):
        key = key.replace(suffix, "")
    return GPU_PRICE_PER_SECOND.get(key)


@dataclass(frozen=True)
class EndpointConfig:
    """One RunPod endpoint served as one model."""

    model: str
    endpoint_id: str
    gpu: str | None = None
    price_per_second: float | None = None  # USD
    description: str = ""


def _number(value: Any, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a number, got {value!r}") from exc


def _price(gpu: str | None, explicit: float | None, where: str) -> float | None:
    if explicit is not None:
        return explicit
    price = gpu_price(gpu)
    if gpu and price is None:
        log.warning("%s: GPU %r is not in the price table (known: %s); set a price per second "
                    "(RUNPOD_PRICE_PER_SECOND or price_per_second) to get costs",
                    where, gpu, ", ".join(sorted(GPU_PRICE_PER_SECOND)))
    return price


def load_endpoints(config: Mapping[str, Any]) -> list[EndpointConfig]:
    """The configured endpoints, ``RUNPOD_ENDPOINT_ID`` (the default model) first.

    Raises ``ValueError`` with a message naming the variable when a value is malformed.
    """
    gpu = config.get("RUNPOD_GPU") or None
    global_pps = _number(config.get("RUNPOD_PRICE_PER_SECOND"), "RUNPOD_PRICE_PER_SECOND")
    endpoints: list[EndpointConfig] = []
    single = str(config.get("RUNPOD_ENDPOINT_ID") or "").strip()
    if single:
        endpoints.append(EndpointConfig(
            model=single, endpoint_id=single, gpu=gpu,
            price_per_second=_price(gpu, global_pps, "RUNPOD_GPU"),
            description=f"RunPod endpoint {single}" + (f" ({gpu})" if gpu else ""),
        ))
    raw = config.get("RUNPOD_ENDPOINTS")
    if raw:
        try:
            specs = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
        except ValueError as exc:
            raise ValueError(f"RUNPOD_ENDPOINTS is not valid JSON ({exc}); expected "
                             '{"model-name": {"endpoint_id": "...", "gpu": "L4"}}') from exc
        if not isinstance(specs, Mapping):
            raise ValueError("RUNPOD_ENDPOINTS must be a JSON object of model name -> settings")
        for model, spec in specs.items():
            if not isinstance(spec, Mapping) or not spec.get("endpoint_id"):
                raise ValueError(f"RUNPOD_ENDPOINTS[{model!r}] needs an \"endpoint_id\"")
            if any(e.model == model for e in endpoints):
                continue
            spec_gpu = spec.get("gpu") or gpu
            explicit = _number(spec.get("price_per_second"),
                               f"RUNPOD_ENDPOINTS[{model!r}].price_per_second")
            if explicit is None and not spec.get("gpu"):
                explicit = global_pps  # the global price applies unless the endpoint names a GPU
            endpoints.append(EndpointConfig(
                model=str(model), endpoint_id=str(spec["endpoint_id"]), gpu=spec_gpu,
                price_per_second=_price(spec_gpu, explicit, f"RUNPOD_ENDPOINTS[{model!r}]"),
                description=str(spec.get("description") or f"RunPod endpoint {spec['endpoint_id']}"),
            ))
    return endpoints


class RunPodProvider(Provider):
    """Streams replies from RunPod Serverless vLLM endpoints; one model per endpoint."""

    def __init__(
        self,
        endpoints: list[EndpointConfig],
        client: RunPodClient,
        *,
        execution_timeout_s: float | None = None,
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
        poll: PollPolicy | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("RunPodProvider needs at least one endpoint")
        super().__init__(
            id="runpod",
            name="RunPod Serverless",
            models=[ModelInfo(id=e.model, description=e.description) for e in endpoints],
            default_model=endpoints[0].model,
            description="vLLM workers on RunPod Serverless (queue API, streamed)",
        )
        self.endpoints = list(endpoints)
        self.client = client
        self.execution_timeout_s = execution_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.poll = poll or PollPolicy()
        self._lock = threading.Lock()
        self._live: dict[str, JobRunner] = {}
        self._wait_ignored_at: dict[str, float] = {}

    @property
    def api_calls(self) -> int:
        """HTTP calls to RunPod made by this provider so far, across all jobs."""
        return self.client.api_calls

    # -- the Provider contract ---------------------------------------------------------------

    def stream(self, request: ChatRequest, context: GenerationContext) -> Iterator[Chunk]:
        """Run (or reattach to) a RunPod job and yield its reply; see ``plugins.runpod_job``."""
        runner = JobRunner(self, request, context, self.endpoint_for(request.model))
        with self._lock:
            self._live[context.message_id] = runner
        try:
            yield from runner.run()
        finally:
            # The host stops iterating as soon as it cancels; a job started meanwhile must still
            # be stopped (stop_upstream is a no-op when already sent or never started).
            if context.cancelled.is_set() and not runner.finished:
                runner.stop_upstream()
            with self._lock:
                if self._live.get(context.message_id) is runner:
                    del self._live[context.message_id]

    def cancel(self, context: GenerationContext) -> None:
        """Stop the reply: ``POST /cancel`` once, and make ``stream`` return promptly."""
        # Setting the event (normally already set by the host) wakes stream's waits, and covers a
        # cancel that arrives while /run is in flight: stream cancels the job once it has an id.
        context.cancelled.set()
        with self._lock:
            runner = self._live.get(context.message_id)
        if runner is not None:
            runner.stop_upstream()

    def price(self, request: ChatRequest, result: GenerationResult) -> Cost | None:
        """RunPod bills execution per started second: ``ceil(executionTime s) * price/s``."""
        meta = result.meta or {}
        if meta.get("execution_ms") is None:
            return None
        endpoint = self.endpoint_by_id(str(meta.get("endpoint_id") or ""))
        pps = endpoint.price_per_second if endpoint else None
        if pps is None:
            pps = meta.get("price_per_second_usd")
        if pps is None:
            return None
        execution_ms = float(meta["execution_ms"])
        billed = math.ceil(max(0.0, execution_ms) / 1000)
        return Cost(
            micros=round(billed * float(pps) * 1_000_000),
            breakdown={
                "execution_ms": execution_ms,
                "billed_seconds": billed,
                "price_per_second_usd": float(pps),
                "delay_ms": meta.get("delay_ms"),
                "gpu": endpoint.gpu if endpoint else meta.get("gpu"),
                "runpod_job_id": meta.get("runpod_job_id"),
            },
        )

    # -- helpers used by JobRunner -----------------------------------------------------------

    def endpoint_for(self, model: str | None) -> EndpointConfig:
        """The endpoint serving ``model`` (a configured model name or endpoint id; "" = default)."""
        if not model:
            return self.endpoints[0]
        for endpoint in self.endpoints:
            if model in (endpoint.model, endpoint.endpoint_id):
                return endpoint
        known = ", ".join(e.model for e in self.endpoints)
        raise InvalidRequest(
            f"RunPod has no model {model!r} (configured: {known}); add it to RUNPOD_ENDPOINTS.",
            details={"provider": "runpod", "model": model},
        )

    def endpoint_by_id(self, endpoint_id: str) -> EndpointConfig | None:
        """The configured endpoint with this id, if any."""
        return next((e for e in self.endpoints if e.endpoint_id == endpoint_id), None)

    def execution_timeout_ms(self, context: GenerationContext) -> int:
        """``policy.executionTimeout``: configured, else just below the job's own deadline."""
        if self.execution_timeout_s:
            return max(MIN_EXECUTION_TIMEOUT_MS, int(self.execution_timeout_s * 1000))
        left = context.seconds_left()
        # Leave room for the final reads and the reply's write before the host's deadline.
        margin = min(30.0, max(3.0, left * 0.1))
        if left - margin < 1.0:
            raise ProviderTimeout(
                f"Only {left:.1f} s are left before this reply's deadline: too little to start a "
                "RunPod job. Raise the job timeout (CHATAPP_JOB_TIMEOUT_S)."
            )
        # RunPod refuses policies under 5 s; our own deadline check cancels the job in time.
        return max(MIN_EXECUTION_TIMEOUT_MS, int((left - margin) * 1000))

    def wait_supported(self, endpoint_id: str) -> bool:
        """Whether to long-poll this endpoint (False for a while after it ignored ``wait``)."""
        with self._lock:
            since = self._wait_ignored_at.get(endpoint_id)
        return since is None or time.monotonic() - since > self.poll.probe_again_s

    def mark_wait_ignored(self, endpoint_id: str) -> None:
        """Remember that this endpoint ignores ``wait`` so later jobs poll adaptively at once."""
        log.info("RunPod endpoint %s ignores /stream?wait; polling adaptively", endpoint_id)
        with self._lock:
            self._wait_ignored_at[endpoint_id] = time.monotonic()


def _positive(config: Mapping[str, Any], name: str) -> float | None:
    value = _number(config.get(name), name)
    if value is not None and value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return value


@hookimpl
def register_providers(config: Mapping[str, Any]) -> list[Provider]:
    """The RunPod provider when ``RUNPOD_API_KEY`` and an endpoint are configured, else []."""
    key = str(config.get("RUNPOD_API_KEY") or "").strip()
    endpoints = load_endpoints(config)
    if not key or not endpoints:
        if key or endpoints:
            log.warning("RunPod provider disabled: set both RUNPOD_API_KEY and RUNPOD_ENDPOINT_ID "
                        "(or RUNPOD_ENDPOINTS)")
        return []
    client = RunPodClient(key, str(config.get("RUNPOD_BASE_URL") or DEFAULT_BASE_URL))
    return [RunPodProvider(
        endpoints,
        client,
        execution_timeout_s=_positive(config, "RUNPOD_EXECUTION_TIMEOUT_S"),
        stall_timeout_s=_positive(config, "RUNPOD_STALL_TIMEOUT_S") or DEFAULT_STALL_TIMEOUT_S,
        poll=PollPolicy(after_items_s=interval) if (interval := _positive(config, "RUNPOD_STREAM_INTERVAL_S"))
        else None,
    )]
