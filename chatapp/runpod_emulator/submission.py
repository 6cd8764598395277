"""Validate a /run or /runsync body the way RunPod does (400 on anything malformed)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from chatapp.runpod_emulator.config import EmulatorConfig
from chatapp.runpod_emulator.faults import Fault, FaultError, parse_faults


class BadRequest(ValueError):
    """The request is malformed: answered with HTTP 400 and this message."""


@dataclass
class Submission:
    """A validated job request."""

    input: Any
    webhook: str | None = None
    execution_timeout_s: float = 600.0
    ttl_s: float = 86400.0
    low_priority: bool = False
    faults: list[Fault] = field(default_factory=list)


def _positive_int(policy: dict, key: str) -> int | None:
    value = policy.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise BadRequest(f"policy.{key} must be a positive integer (milliseconds)")
    return value


def parse_submission(raw: bytes, cfg: EmulatorConfig, sync: bool) -> Submission:
    """Parse and check a job request body; raises BadRequest with RunPod-like messages."""
    limit = cfg.max_sync_payload_bytes if sync else cfg.max_payload_bytes
    if len(raw) > limit:
        raise BadRequest(f"payload too large: {len(raw)} bytes, limit {limit}")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict) or "input" not in body:
        raise BadRequest("request body must be a JSON object with an 'input' field")
    webhook = body.get("webhook")
    if webhook is not None and not isinstance(webhook, str):
        raise BadRequest("webhook must be a URL string")
    policy = body.get("policy") or {}
    if not isinstance(policy, dict):
        raise BadRequest("policy must be an object")
    timeout_ms = _positive_int(policy, "executionTimeout") or cfg.execution_timeout_ms
    if timeout_ms < cfg.min_execution_timeout_ms:
        raise BadRequest(f"policy.executionTimeout must be at least {cfg.min_execution_timeout_ms}")
    ttl_ms = _positive_int(policy, "ttl") or cfg.ttl_ms
    if not cfg.min_ttl_ms <= ttl_ms <= cfg.max_ttl_ms:
        raise BadRequest(f"policy.ttl must be between {cfg.min_ttl_ms} and {cfg.max_ttl_ms}")
    job_input = body["input"]
    fault_spec = None
    if isinstance(job_input, dict):
        fault_spec = job_input.get("emulator_fault")
        inner = job_input.get("openai_input")
        if fault_spec is None and isinstance(inner, dict):
            fault_spec = inner.get("emulator_fault")
    try:
        faults = parse_faults(fault_spec, per_request=True)
    except FaultError as exc:
        raise BadRequest(f"emulator_fault: {exc}") from None
    return Submission(job_input, webhook, timeout_ms / 1000, ttl_ms / 1000,
                      bool(policy.get("lowPriority")), faults)
