"""Fault injection: one table of named faults, a parser, and counters for HTTP-level faults.

A fault is armed per endpoint (``EmulatorConfig.faults``, ``--fault``, :meth:`Emulator.arm_fault`)
or per request (job input field ``"emulator_fault"``). Two kinds:

- ``http`` faults change how the next N HTTP calls are answered (429, 500, dropped connection).
  Armed per endpoint they hit any call on that endpoint; armed per request they hit later calls
  naming that job (status, stream, cancel, retry).
- ``job`` faults change how a job runs (fails, times out, stalls, ...). Armed per endpoint they hit
  the next ``count`` jobs (every job when ``count`` is absent); per request, only that job's first
  ``attempts`` runs (default 1), so a ``/retry`` can succeed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class FaultSpec:
    """One row of the fault table."""

    kind: str  # "http" or "job"
    defaults: Mapping[str, Any]
    doc: str


FAULTS: dict[str, FaultSpec] = {
    "rate_limit_burst": FaultSpec("http", {"count": 3, "retry_after": 1},
                                  "next `count` calls get 429 with Retry-After"),
    "server_error": FaultSpec("http", {"count": 1}, "next `count` calls get 500"),
    "drop_connection": FaultSpec("http", {"count": 1, "routes": ["status", "stream"]},
                                 "close the TCP connection without a response, `count` times"),
    "failed_handler": FaultSpec("job", {"message": "emulated handler failure", "after_s": None},
                                "FAILED with the JSON handler-exception error string"),
    "failed_generator": FaultSpec("job", {"message": "emulated generator failure",
                                          "after_tokens": 5},
                                  "stream some tokens, then FAILED with 'handler: ... traceback'"),
    "timed_out": FaultSpec("job", {"after_s": None},
                           "TIMED_OUT after `after_s` of execution (default: ttft)"),
    "stall": FaultSpec("job", {"after_tokens": 5, "seconds": None},
                       "stop producing after `after_tokens` for `seconds` (None: forever)"),
    "completed_without_output": FaultSpec("job", {}, "COMPLETED but /status has no output"),
    "cold_start": FaultSpec("job", {"seconds": 2.0},
                            "the job boots its own worker with this cold start"),
}


class FaultError(ValueError):
    """A fault description that cannot be parsed."""


@dataclass
class Fault:
    """An armed fault: its name, parameters (defaults filled in) and remaining uses."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    remaining: int | None = None  # None: unlimited

    @property
    def kind(self) -> str:
        return FAULTS[self.name].kind

    def applies_to(self, route: str) -> bool:
        routes = self.params.get("routes")
        return not routes or route in routes

    def use(self) -> bool:
        """Consume one use; False when none is left."""
        if self.remaining is None:
            return True
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


def _coerce(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def parse_fault(value: Any, per_request: bool = False) -> Fault:
    """Parse ``"name"``, ``"name:key=value,key=value"`` or ``{"name": ..., key: value}``."""
    if isinstance(value, str):
        name, _, rest = value.partition(":")
        params: dict[str, Any] = {}
        for pair in filter(None, rest.split(",")):
            key, sep, raw = pair.partition("=")
            if not sep:
                raise FaultError(f"fault parameter {pair!r} is not key=value")
            params[key.strip()] = _coerce(raw.strip())
    elif isinstance(value, dict) and isinstance(value.get("name"), str):
        name, params = value["name"], {k: v for k, v in value.items() if k != "name"}
    else:
        raise FaultError(f"cannot parse fault {value!r}")
    name = name.strip()
    if name not in FAULTS:
        raise FaultError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
    spec = FAULTS[name]
    merged = {**spec.defaults, **params}
    if isinstance(merged.get("routes"), str):
        merged["routes"] = merged["routes"].split("|")
    if spec.kind == "http":
        remaining = int(merged.get("count") or 1)
    elif per_request:
        remaining = int(merged.get("attempts") or 1)
    else:
        remaining = int(merged["count"]) if merged.get("count") is not None else None
    return Fault(name, merged, remaining)


def parse_faults(value: Any, per_request: bool = False) -> list[Fault]:
    """Parse one fault or a list of them (None gives an empty list)."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [parse_fault(item, per_request) for item in items]


def take_http_fault(faults: list[Fault], route: str) -> Fault | None:
    """Consume and return the first armed HTTP fault that applies to `route`."""
    for fault in faults:
        if fault.kind == "http" and fault.applies_to(route) and fault.use():
            return fault
    return None


def take_job_fault(faults: list[Fault]) -> Fault | None:
    """Consume and return the first armed job fault, if any."""
    for fault in faults:
        if fault.kind == "job" and fault.use():
            return fault
    return None


def handler_error(message: str, worker_id: str) -> str:
    """The JSON-encoded error RunPod's SDK reports when a (non-generator) handler raises."""
    return json.dumps({
        "error_type": "<class 'RuntimeError'>",
        "error_message": message,
        "error_traceback": _traceback(message, "run_job", "return handler(job)"),
        "hostname": worker_id,
        "worker_id": worker_id,
        "runpod_version": "1.7.9",
    })


def generator_error(message: str) -> str:
    """The error string RunPod's SDK reports when a generator handler raises."""
    tb = _traceback(message, "run_job_generator", "async for output_partial in job_output:")
    return f"handler: {message} \ntraceback: {tb}"


def _traceback(message: str, function: str, line: str) -> str:
    return (
        "Traceback (most recent call last):\n"
        '  File "/usr/local/lib/python3.11/dist-packages/runpod/serverless/modules/rp_job.py",'
        f" line 316, in {function}\n    {line}\n"
        '  File "/src/handler.py", line 13, in handler\n'
        "    raise RuntimeError(message)  # injected by the RunPod emulator\n"
        f"RuntimeError: {message}\n"
    )
