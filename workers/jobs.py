"""The RQ job: generate one reply. It takes only the reply's id and is safe to run twice.

Ownership comes from a fenced claim (``chatapp.replies``); every event write and the finish are
checked against the claim's token, so an orphaned or duplicate run cannot add text or finish the
reply a second time. A resumed attempt skips the text already delivered. When ``workers.pool``'s
worker runs the job, the claim and the finish ride in RQ's own round trips (``workers.rides``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

import redis
from rq.timeouts import JobTimeoutException

from chatapp.chat import request_for_reply
from chatapp.logs import reply_context
from chatapp.errors import ChatAppError, GenerationLost, ProviderTimeout
from chatapp.models import (
    CANCELLED, DONE, FAILED, ChatRequest, GenerationContext, GenerationResult, Message, Provider, Step, Usage,
)
from chatapp.replies import Claim, Event, FencedOut
from workers import rides, runtime
from workers.finisher import RENDERED

if TYPE_CHECKING:  # pragma: no cover
    from chatapp.extension import ChatApp
    from workers.keeper import LeaseKeeper

log = logging.getLogger(__name__)

#: the provider must be done this long before RQ's own job timeout fires
DEADLINE_MARGIN_S = 20
#: after Stop, how long the provider may take to report what ran (e.g. RunPod's billed seconds)
CANCEL_DRAIN_S = 10.0


@rides.rides_on_rq
def generate_reply(message_id: str) -> str:
    """RQ entry point. Returns how the run ended (for RQ's result), never raises for reply errors.
    (When the finish rides on RQ's end record, it is sent after this returns: a run fenced out
    there returns the state it tried to finish with, and logs that it was fenced out.)"""
    ext, keeper, _writer = runtime.get()
    return ReplyRun(ext, keeper, rides.for_run(message_id)).run()


class ReplyRun:
    def __init__(self, ext: "ChatApp", keeper: "LeaseKeeper", ride: rides.Ride) -> None:
        self.ext, self.keeper, self.ride, self.mid = ext, keeper, ride, ride.mid
        self.writes, self.token = ride.writes, ride.token
        self.unwritten: list[Event] = []  # the run's last events: they go out with its finish

    def run(self) -> str:
        reply_context.set({"message_id": self.mid})
        claim = self.ride.claim()
        if claim.status != "ok":
            log.info("reply %s not run: %s", self.mid, claim.status)
            return claim.status
        try:
            request, provider = self.build_request(claim)
        except ChatAppError as err:
            result = GenerationResult(self.mid, FAILED, "", error=err.to_dict()["error"], attempt=claim.attempt)
            return self.end(result, [])
        context = GenerationContext(
            message_id=self.mid, attempt=claim.attempt, resume_state=claim.resume_state,
            deadline=time.time() + max(5, int(self.ext.config["JOB_TIMEOUT_S"]) - DEADLINE_MARGIN_S),
            save_state=lambda state: self.ext.replies.save_state(self.mid, self.token, state),
        )
        self.keeper.track(self.mid, self.token, context, provider)
        try:
            result = self.generate(request, provider, context, claim)
        finally:
            self.keeper.untrack(self.mid, self.token)
        if result is None:
            return "fenced"
        return self.finish(request, provider, result)

    def build_request(self, claim: Claim) -> tuple[ChatRequest, Provider]:
        request, provider = request_for_reply(self.ext, self.mid, claim.source)
        RENDERED.put(self.mid, request)  # after_generation reuses it when it runs in this process
        return request, provider

    def generate(self, request: ChatRequest, provider: Provider, context: GenerationContext,
                 claim: Claim) -> GenerationResult | None:
        """Stream from the provider into the reply's events; None if this run was fenced out."""
        result = GenerationResult(self.mid, DONE, "", provider=provider.id, model=request.model,
                                  started_at=time.time(), attempt=claim.attempt)
        # text an earlier attempt delivered: the provider starts over and we skip it
        stream = PartStream(self, result, claim.emitted)
        self.writes.generating()
        try:
            try:
                for index, (step, part_request) in enumerate(parts_of(request)):
                    if context.cancelled.is_set():
                        break
                    part_context = step_context(context, index) if step else context
                    heading = f"{chr(10) * 2 if index else ''}**{step.label or step.name}**{chr(10) * 2}" if step else ""
                    stream.run(provider, part_request, part_context, step.name if step else None, heading)
                if context.cancelled.is_set():
                    result.state, result.finish_reason = CANCELLED, "cancelled"
            except (FencedOut, redis.ConnectionError, redis.TimeoutError):
                raise
            except ChatAppError as err:
                result.state, result.error = FAILED, err.to_dict()["error"]
                if err.status >= 500:
                    log.warning("reply %s failed: %s (%s)", self.mid, err.code, err.message)
            except JobTimeoutException:
                result.state, result.error = FAILED, ProviderTimeout("The reply took longer than the job timeout.",
                                                                     code="job_timeout").to_dict()["error"]
            except Exception:
                log.exception("reply %s: provider %s crashed", self.mid, provider.id)
                result.state, result.error = FAILED, ChatAppError().to_dict()["error"]
            # however it ended, every event is stored before or with the finish
            self.unwritten = self.writes.take_rest()
        except FencedOut:
            log.warning("reply %s: this run lost ownership; stopping its provider", self.mid)
            self.keeper.stop_generation(self.mid, "fenced", self.token)  # tells the provider once
            return None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # Redis blinked while this run wrote an event: the write may or may not have landed,
            # so do not finish (that would fail a reply nothing is wrong with). Stop here without
            # cancelling the provider job; the lease lapses and a retry resumes after the text
            # that is stored (reattaching to the provider job when it can).
            log.warning("reply %s: Redis unavailable while streaming (%s); handing it off to a retry",
                        self.mid, type(exc).__name__)
            return None
        result.finished_at = time.time()
        # what the reply's record holds: an earlier attempt's text and this run's appends (only the
        # owner appends, so no read is needed)
        result.text = claim.emitted + stream.appended
        return result

    def finish(self, request: ChatRequest, provider: Provider, result: GenerationResult) -> str:
        pm = self.ext.pm
        try:
            result.cost = pm.hook.price_generation(request=request, result=result, provider=provider,
                                                  host=self.ext.host)
        except Exception:
            log.exception("price_generation failed for %s; recording no cost", self.mid)
        # after_generation runs from the finished-replies outbox (finisher.py)
        return self.end(result, self.unwritten, lambda: log_finished(result, request))

    def end(self, result: GenerationResult, events: list[Event], logged: Callable[[], None] | None = None) -> str:
        """Finish the reply with ``result`` after ``events``; ``logged`` runs if this run did.
        On RQ, the finish goes out with RQ's record of the job's end, after this returns."""
        def then(finished: bool) -> None:
            if not finished:
                log.info("reply %s: fenced out at its finish", self.mid)
            elif logged is not None:
                logged()

        return "fenced" if self.ride.finish(result, events, then) is False else result.state


def log_finished(result: GenerationResult, request: ChatRequest) -> None:
    """One INFO line per reply run with the provider's latency, for log-based dashboards."""
    def ms(start: float | None, end: float | None) -> int | None:
        return int((end - start) * 1000) if start and end else None

    log.info("reply %s %s via %s/%s", result.message_id, result.state, result.provider, result.model,
             extra={"data": {"outcome": result.state, "provider": result.provider, "model": result.model,
                             "attempt": result.attempt, "conversation_id": request.conversation_id,
                             "provider_ttft_ms": ms(result.started_at, result.first_token_at),
                             "provider_latency_ms": ms(result.started_at, result.finished_at),
                             "input_tokens": result.usage.input_tokens, "output_tokens": result.usage.output_tokens,
                             "cost_micros": result.cost.micros if result.cost else 0,
                             "error_code": (result.error or {}).get("code")}})


def parts_of(request: ChatRequest) -> list[tuple[Step | None, ChatRequest]]:
    """The provider calls a reply takes: one, or one per step of a structured persona. A step's
    call sees the parts written so far and is told to write only its own part."""
    steps = request.persona.steps if request.persona else []
    if not steps:
        return [(None, request)]
    return [(step, StepRequest(request, steps, i)) for i, step in enumerate(steps)]  # type: ignore[misc]


class StepRequest(ChatRequest):
    """A step's request: rendered lazily, since it includes the text of the parts before it."""

    def __init__(self, base: ChatRequest, steps: list[Step], index: int) -> None:
        super().__init__(**{f: getattr(base, f) for f in base.__dataclass_fields__})
        step = steps[index]
        plan = ", ".join(s.label or s.name for s in steps)
        self.messages = [*base.messages, Message(
            "system", f"Answer in {len(steps)} parts ({plan}). Write only part {index + 1}, "
                      f"\"{step.label or step.name}\": {step.instruction}".rstrip(": "))]
        self.base_count = len(base.messages)

    def with_previous(self, previous: str) -> "StepRequest":
        if previous:
            self.messages.insert(self.base_count, Message("assistant", previous))
        return self


def step_context(context: GenerationContext, index: int) -> GenerationContext:
    """The context one step's provider call gets: resume state only if it was saved by that step."""
    saved = context.resume_state or {}
    resume = saved.get("state", {}) if saved.get("step") == index else {}
    return replace(context, resume_state=resume,
                   save_state=lambda state: context.save_state({"step": index, "state": state}))


#: provider facts that add up over a reply's provider calls (a structured reply makes several)
SUMMED_META = ("execution_ms", "delay_ms", "api_calls")


class PartStream:
    """Writes provider calls' chunks as the reply's events: status changes, deltas (skipping text
    an earlier attempt already delivered), usage and meta. After Stop, text is dropped but usage
    and meta still count: they are what the upstream charged for the part that ran."""

    def __init__(self, run: ReplyRun, result: GenerationResult, already: str) -> None:
        self.run_, self.result, self.already = run, result, already
        self.status_sent: str | None = None
        self.written = ""  # the reply so far, as the model wrote it (what later steps see)
        self.appended = ""  # the text this run added to the stored reply
        self.result.usage = Usage()

    def run(self, provider: Provider, request: ChatRequest, context: GenerationContext, part: str | None,
            heading: str) -> None:
        if isinstance(request, StepRequest):
            request = request.with_previous(self.written)
        usage: Usage | None = None
        meta: dict[str, Any] = {}
        stopped_at = None
        for chunk in provider.stream(request, context):
            usage = chunk.usage or usage
            meta.update(chunk.meta)
            if context.cancelled.is_set():
                stopped_at = stopped_at or time.monotonic()
                if time.monotonic() - stopped_at > CANCEL_DRAIN_S:
                    log.warning("reply %s: provider %s kept streaming after Stop", self.run_.mid, provider.id)
                    break
                continue
            events: list[Event] = []
            if chunk.status and chunk.status != self.status_sent:
                self.status_sent = chunk.status
                events.append(("status", {"state": chunk.status}, ""))
            full = chunk.text
            if full and heading:
                full, heading = heading + full, ""
            self.written += full
            text = self.skip_delivered(full)
            if text:
                if self.status_sent != "generating":
                    self.status_sent = "generating"
                    events.append(("status", {"state": "generating"}, ""))
                self.result.first_token_at = self.result.first_token_at or time.time()
                events.append(("delta", {"text": text, **({"part": part} if part else {})}, text))
            if chunk.finish_reason:
                self.result.finish_reason = chunk.finish_reason
            if events:
                self.run_.writes.append(events)
                self.appended += text
        if usage is not None:
            self.result.usage = Usage(self.result.usage.input_tokens + usage.input_tokens,
                                      self.result.usage.output_tokens + usage.output_tokens)
        for key, value in meta.items():
            old = self.result.meta.get(key)
            summed = key in SUMMED_META and isinstance(value, (int, float)) and isinstance(old, (int, float))
            self.result.meta[key] = old + value if summed else value

    def skip_delivered(self, text: str) -> str:
        if not text or not self.already:
            return text
        overlap = min(len(text), len(self.already))
        if text[:overlap] != self.already[:overlap]:
            raise GenerationLost("The reply was interrupted and its retry wrote different text; regenerate it.",
                                 code="retry_diverged")
        self.already = self.already[overlap:]
        return text[overlap:]
