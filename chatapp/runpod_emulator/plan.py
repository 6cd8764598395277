"""Turn a job into a timed plan of steps: yields, then exactly one end (or none, when stalled).

Times are seconds after execution starts. Token k (1-based) appears at ``ttft + (k-1)/tokens_per_s``
and a yield happens when its last token does, which is how the vLLM worker batches its output.
Job faults are applied here by editing the plan, so the pool never needs to know about them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from chatapp.runpod_emulator import model
from chatapp.runpod_emulator.config import EmulatorConfig
from chatapp.runpod_emulator.faults import Fault, generator_error, handler_error

YIELD, COMPLETE, FAIL, TIMEOUT = "yield", "complete", "fail", "timeout"


@dataclass(frozen=True)
class Step:
    """One planned event: at `at` seconds into execution, do `kind` with `value`."""

    at: float
    kind: str
    value: Any = None


def build_plan(job_id: str, job_input: Any, cfg: EmulatorConfig, worker_id: str,
               fault: Fault | None) -> list[Step]:
    """The steps one execution of a job goes through under `cfg` (and an optional job fault)."""
    def at(tokens: int) -> float:
        return cfg.ttft_s + max(0, tokens - 1) / cfg.tokens_per_s

    if fault is not None and fault.name == "failed_handler":
        after = fault.params.get("after_s")
        return [Step(cfg.ttft_s if after is None else float(after), FAIL,
                     handler_error(str(fault.params["message"]), worker_id))]
    try:
        parsed = model.parse_input(job_input, cfg.default_max_tokens, cfg.max_tokens_cap)
    except model.InputError as exc:
        # The vLLM worker is a generator handler, so bad input fails the generator way.
        return [Step(cfg.ttft_s, FAIL, generator_error(str(exc)))]
    reply = model.demo_reply(parsed)
    if parsed.openai or cfg.output_format == "openai":
        yields = model.openai_yields(
            reply, parsed.stream, parsed.include_usage, model.completion_id_for(job_id),
            int(time.time()), parsed.model or cfg.model_name, model.split_seed(cfg.seed, job_id))
    else:
        yields = model.classic_yields(reply, parsed.stream)
    n = len(reply.pieces)
    steps = [Step(at(tokens), YIELD, item) for tokens, item in yields]
    steps.append(Step(at(n), COMPLETE))
    return _apply_fault(steps, yields, fault, at, cfg)


def _apply_fault(steps: list[Step], yields: model.Yields, fault: Fault | None, at: Any,
                 cfg: EmulatorConfig) -> list[Step]:
    if fault is None or fault.name == "cold_start":
        return steps
    name, params = fault.name, fault.params
    if name == "completed_without_output":
        return steps[:-1] + [Step(steps[-1].at, COMPLETE, "no_output")]
    if name == "timed_out":
        after = cfg.ttft_s if params.get("after_s") is None else float(params["after_s"])
        return [s for s in steps if s.kind == YIELD and s.at < after] + [Step(after, TIMEOUT)]
    after_tokens = int(params.get("after_tokens") or 0)
    kept = [Step(at(tokens), YIELD, item) for tokens, item in yields if tokens <= after_tokens]
    rest = steps[len(kept):]
    if name == "failed_generator":
        return kept + [Step(at(max(1, after_tokens)), FAIL,
                            generator_error(str(params["message"])))]
    if name == "stall":
        if params.get("seconds") is None:
            return kept  # no end step: the job stays IN_PROGRESS until cancel or timeout
        pause = float(params["seconds"])
        return kept + [Step(s.at + pause, s.kind, s.value) for s in rest]
    return steps
