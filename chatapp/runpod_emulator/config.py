"""Configuration of the RunPod emulator: timings, prices, limits, faults, per-endpoint overrides."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Flex price per second by GPU class (RunPod's published table, valid 2025-05 to 2026-05).
GPU_PRICES_PER_S: dict[str, float] = {
    "A4000": 0.00016,
    "L4": 0.00019,
    "A5000": 0.00019,
    "3090": 0.00019,
    "4090": 0.00031,
    "A6000": 0.00034,
    "A40": 0.00034,
    "L40": 0.00053,
    "L40S": 0.00053,
    "6000ADA": 0.00053,
    "A100": 0.00076,
    "H100": 0.00116,
    "H200": 0.00155,
}

OUTPUT_FORMATS = ("classic", "openai")


@dataclass(frozen=True)
class RateLimits:
    """RunPod's per-endpoint request limits: at most N calls per `window_s` per route.

    The defaults are RunPod's published numbers (per 10 s). Use :meth:`scaled` to shrink them
    for tests, or ``enabled=False`` to switch limiting off.
    """

    window_s: float = 10.0
    run: int = 1000
    runsync: int = 2000
    status: int = 2000
    stream: int = 2000
    cancel: int = 100
    purge_queue: int = 2
    openai: int = 2000
    enabled: bool = True

    def limit_for(self, route: str) -> int | None:
        """The limit for a route class (``run``, ``status``, ...), or None when unlimited."""
        if not self.enabled:
            return None
        value = getattr(self, route.replace("-", "_"), None)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def scaled(self, factor: float) -> "RateLimits":
        """The same limits multiplied by `factor` (each at least 1)."""
        counts = {
            f.name: max(1, int(getattr(self, f.name) * factor))
            for f in dataclasses.fields(self)
            if f.name not in ("window_s", "enabled")
        }
        return dataclasses.replace(self, **counts)


@dataclass
class EmulatorConfig:
    """Every knob of the emulator. Defaults are fast, so tests and the embedded app feel snappy.

    ``endpoints`` maps an endpoint id to a dict overriding any of these fields for that endpoint
    only (e.g. ``{"slow": {"cold_start_s": 3, "tokens_per_s": 5}}``).
    """

    cold_start_s: float = 0.5  # a new worker boots this long before taking a job
    idle_timeout_s: float = 5.0  # a worker stays warm (and billed) this long after its last job
    max_workers: int = 8
    ttft_s: float = 0.2  # time to first token once a job runs
    tokens_per_s: float = 50.0
    output_format: str = "classic"  # "classic" (vLLM worker <= v2.23) or "openai" (>= v2.24)
    price_per_s: float = 0.00019  # USD per worker-second (24 GB class)
    honor_stream_wait: bool = True  # False: /stream ignores ?wait= and answers at once
    rate_limits: RateLimits = field(default_factory=RateLimits)
    faults: list[Any] = field(default_factory=list)  # endpoint-wide faults, see faults.py
    default_max_tokens: int = 64  # reply length when the input gives no max_tokens
    max_tokens_cap: int = 8192
    retention_s: float = 1800.0  # /run results kept this long after the job ends
    sync_retention_s: float = 60.0  # /runsync results kept this long
    execution_timeout_ms: int = 600_000  # endpoint default for policy.executionTimeout
    ttl_ms: int = 86_400_000  # endpoint default for policy.ttl
    min_execution_timeout_ms: int = 5_000  # RunPod rejects smaller policies; tests lower these
    min_ttl_ms: int = 10_000
    max_ttl_ms: int = 7 * 86_400_000
    max_payload_bytes: int = 10 * 1024 * 1024  # /run
    max_sync_payload_bytes: int = 20 * 1024 * 1024  # /runsync
    max_queue_per_worker: int = 500  # /run gets 429 past 50 queued jobs and max_workers * this
    model_name: str = "emulator/demo-echo"
    seed: int = 0  # seeds the arbitrary SSE split points (combined with the job id)
    webhook_timeout_s: float = 5.0
    webhook_retries: int = 2  # RunPod retries a failed webhook twice, 10 s apart
    webhook_retry_delay_s: float = 10.0
    strict_endpoints: bool = False  # True: only ids in `endpoints` exist, others are 404
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.rate_limits, dict):
            self.rate_limits = RateLimits(**self.rate_limits)
        self._validate()
        known = {f.name for f in dataclasses.fields(self)} - {"endpoints", "strict_endpoints"}
        for endpoint_id, overrides in self.endpoints.items():
            unknown = set(overrides) - known
            if unknown:
                raise ValueError(f"endpoint {endpoint_id!r}: unknown settings {sorted(unknown)}")

    def _validate(self) -> None:
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}")
        if self.max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if self.tokens_per_s <= 0:
            raise ValueError("tokens_per_s must be positive")
        for name in ("cold_start_s", "idle_timeout_s", "ttft_s", "price_per_s", "retention_s",
                     "sync_retention_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    def for_endpoint(self, endpoint_id: str) -> "EmulatorConfig":
        """The settings one endpoint runs with: this config plus its overrides."""
        overrides = self.endpoints.get(endpoint_id)
        if not overrides:
            return self
        return dataclasses.replace(self, endpoints={}, **overrides)

    def serves(self, endpoint_id: str) -> bool:
        """Whether `endpoint_id` exists (any id does unless ``strict_endpoints``)."""
        return not self.strict_endpoints or endpoint_id in self.endpoints
