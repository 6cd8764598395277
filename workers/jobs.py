"""The RQ job: generate one reply. It takes only the reply's id and is safe to run twice.

Ownership comes from a fenced claim (``chatapp.replies``); every event write and the finish are
checked against the claim's token, so an orphaned or duplicate run cannot add text or finish the
reply a second time. A resumed attempt skips the text already delivered.
"""
from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from rq.timeouts import JobTimeoutException

from chatapp.chat import request_for_reply
from chatapp.errors import ChatAppError, GenerationLost, ProviderTimeout
from chatapp.models import CANCELLED, DONE, FAILED, ChatRequest, GenerationContext, GenerationResult, Provider, Usage
from chatapp.replies import Claim, FencedOut
from workers import runtime

if TYPE_CHECKING:  # pragma: no cover
    from chatapp.extension import ChatApp
    from workers.keeper import LeaseKeeper

log = logging.getLogger(__name__)

#: the provider must be done this long before RQ's own job timeout fires
DEADLINE_MARGIN_S = 20
#: after Stop, how long the provider may take to report what ran (e.g. RunPod's billed seconds)
CANCEL_DRAIN_S = 10.0


def generate_reply(message_id: str) -> str:
    """RQ entry point. Returns how the run ended (for RQ's result), never raises for reply errors."""
    ext, keeper = runtime.get()
    return ReplyRun(ext, keeper, message_id).run()


class ReplyRun:
    def __init__(self, ext: "ChatApp", keeper: "LeaseKeeper", mid: str) -> None:
        self.ext, self.keeper, self.mid = ext, keeper, mid
        self.token = uuid.uuid4().hex

    def run(self) -> str:
        claim = self.ext.replies.claim(self.mid, self.token)
        if claim.status != "ok":
            log.info("reply %s not run: %s", self.mid, claim.status)
            return claim.status
        try:
            request, provider = self.build_request()
        except ChatAppError as err:
            result = GenerationResult(self.mid, FAILED, "", error=err.to_dict()["error"], attempt=claim.attempt)
            self.ext.replies.finish(self.mid, self.token, result)
            return FAILED
        context = GenerationContext(
            message_id=self.mid, attempt=claim.attempt, resume_state=claim.resume_state,
            deadline=time.time() + max(5, int(self.ext.config["JOB_TIMEOUT_S"]) - DEADLINE_MARGIN_S),
            save_state=lambda state: self.ext.replies.save_state(self.mid, self.token, state),
        )
        self.keeper.track(self.mid, self.token, context, provider)
        try:
            result = self.generate(request, provider, context, claim)
        finally:
            self.keeper.untrack(self.mid)
        if result is None:
            return "fenced"
        return self.finish(request, provider, result)

    def build_request(self) -> tuple[ChatRequest, Provider]:
        return request_for_reply(self.ext, self.mid)

    def generate(self, request: ChatRequest, provider: Provider, context: GenerationContext,
                 claim: Claim) -> GenerationResult | None:
        """Stream from the provider into the reply's events; None if this run was fenced out."""
        result = GenerationResult(self.mid, DONE, "", provider=provider.id, model=request.model,
                                  started_at=time.time(), attempt=claim.attempt)
        already = claim.emitted  # text an earlier attempt delivered; the provider starts over
        status_sent = None
        stopped_at = None
        try:
            for chunk in provider.stream(request, context):
                if context.cancelled.is_set():
                    # After Stop, text is dropped but usage and meta still count: they are what
                    # the upstream charged for the part that ran.
                    stopped_at = stopped_at or time.monotonic()
                    if chunk.usage is not None:
                        result.usage = chunk.usage
                    result.meta.update(chunk.meta)
                    if time.monotonic() - stopped_at > CANCEL_DRAIN_S:
                        log.warning("reply %s: provider %s kept streaming after Stop", self.mid, provider.id)
                        break
                    continue
                events: list[tuple[str, dict[str, Any], str]] = []
                if chunk.status and chunk.status != status_sent:
                    status_sent = chunk.status
                    events.append(("status", {"state": chunk.status}, ""))
                text = chunk.text
                if text and already:
                    overlap = min(len(text), len(already))
                    if text[:overlap] != already[:overlap]:
                        raise GenerationLost("The reply was interrupted and its retry wrote different text; "
                                             "regenerate it.", code="retry_diverged")
                    text, already = text[overlap:], already[overlap:]
                if text:
                    if status_sent != "generating":
                        status_sent = "generating"
                        events.append(("status", {"state": "generating"}, ""))
                    result.first_token_at = result.first_token_at or time.time()
                    events.append(("delta", {"text": text}, text))
                if chunk.usage is not None:
                    result.usage = chunk.usage
                if chunk.finish_reason:
                    result.finish_reason = chunk.finish_reason
                result.meta.update(chunk.meta)
                if events:
                    self.ext.replies.append(self.mid, self.token, events)
            if context.cancelled.is_set():
                result.state, result.finish_reason = CANCELLED, "cancelled"
        except FencedOut:
            log.warning("reply %s: this run lost ownership; stopping its provider", self.mid)
            self.keeper.stop_generation(self.mid, "fenced")  # tells the provider once
            return None
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
        result.finished_at = time.time()
        result.usage = result.usage or Usage()
        return result

    def finish(self, request: ChatRequest, provider: Provider, result: GenerationResult) -> str:
        pm = self.ext.pm
        result.text = self.ext.redis.get(f"{self.ext.prefix}msg:{self.mid}:partial") or ""
        try:
            result.cost = pm.hook.price_generation(request=request, result=result, provider=provider,
                                                  host=self.ext.host)
        except Exception:
            log.exception("price_generation failed for %s; recording no cost", self.mid)
        if not self.ext.replies.finish(self.mid, self.token, result):
            return "fenced"
        return result.state  # after_generation runs from the finished-replies outbox (finisher.py)
