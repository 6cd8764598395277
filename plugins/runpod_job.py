"""Following one RunPod job for one generation attempt: submit or reattach, stream, finish.

``JobRunner.run`` is the body of ``RunPodProvider.stream``. It polls ``/stream`` with a long-poll
``wait`` when the endpoint honours it and falls back to adaptive polling when it does not (RunPod's
Python SDK sleeps a fixed second instead). ``/stream`` is consume-on-read, so whenever items may
have been consumed without reaching us (a retried read, or a reattach after another attempt read
them) the runner stops streaming text, waits for the job to end and takes the full text from
``/status``, yielding only what the host has not had yet.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterator

from chatapp.errors import ProviderError, ProviderTimeout
from chatapp.models import ChatRequest, Chunk, GenerationContext
from plugins.http_retry import Interrupted
from plugins.runpod_client import TERMINAL, JobCalls, StreamPoll
from plugins.runpod_formats import (
    OutputDecoder,
    decode_output,
    has_output,
    item_output,
    job_error_message,
)
from plugins.sse import estimate_tokens

if TYPE_CHECKING:  # pragma: no cover
    from plugins.runpod import EndpointConfig, RunPodProvider

log = logging.getLogger(__name__)

STATUS_CHUNKS = {"IN_QUEUE": "provider_queued", "IN_PROGRESS": "generating"}
SAMPLING_KEYS = ("max_tokens", "temperature", "top_p")


@dataclass(frozen=True)
class PollPolicy:
    """How ``/stream`` is polled."""

    #: long-poll wait per call. Long, so an idle job costs few calls: Stop does not wait for it,
    #: because the keeper's POST /cancel ends the job and RunPod answers the held call at once.
    wait_ms: int = 5000
    #: pause after a call that returned items, so the next ones accumulate (fewer calls per job;
    #: RunPod rate-limits /stream per endpoint). ``RUNPOD_STREAM_INTERVAL_S``.
    after_items_s: float = 0.25
    #: adaptive polling (when ``wait`` is ignored): first delay, growth while idle, ceiling
    min_delay: float = 0.05
    growth: float = 1.6
    max_delay: float = 1.0
    #: an endpoint found to ignore ``wait`` is probed again after this long
    probe_again_s: float = 600.0


class Pacer:
    """Decides the ``wait`` parameter and the pause before each ``/stream`` call.

    An endpoint that honours ``wait`` holds an idle call for about that long; one that returns an
    empty stream at once, twice in a row, with no status change, ignores it: from then on we poll
    adaptively (``min_delay`` growing to ``max_delay`` while idle, back to ``min_delay`` when
    items arrive) and tell ``on_ignored`` so later jobs skip the probe.
    """

    def __init__(self, policy: PollPolicy, use_wait: bool, on_ignored: Callable[[], None]) -> None:
        self.policy = policy
        self.use_wait = use_wait
        self._on_ignored = on_ignored
        self._quick_empty = 0
        self._delay = policy.min_delay

    def wait_ms(self, seconds_left: float) -> int | None:
        """The ``wait`` to send (never past the reply's deadline), or None when polling adaptively."""
        if not self.use_wait:
            return None
        return max(100, min(self.policy.wait_ms, int(seconds_left * 1000)))

    def next_delay(self, poll: StreamPoll, status_changed: bool) -> float:
        """Seconds to pause before the next call, given what the last call returned."""
        policy = self.policy
        if poll.items or status_changed:
            self._quick_empty = 0
            self._delay = policy.min_delay
            # A short pause after items lets the next few accumulate: fewer calls per job. A
            # finished job's remaining items are all there already: no pause.
            return policy.after_items_s if poll.items and poll.status not in TERMINAL else 0.0
        if self.use_wait:
            if poll.elapsed >= min(policy.wait_ms, 1000) / 2000:
                self._quick_empty = 0
                return 0.0  # the server held the call for us: ask again at once
            self._quick_empty += 1
            if self._quick_empty < 2:
                return policy.min_delay
            self.use_wait = False
            self._on_ignored()
        delay = self._delay
        self._delay = min(policy.max_delay, self._delay * policy.growth)
        return delay


class JobRunner:
    """One attempt of one generation on RunPod. Created per ``stream`` call; not shared."""

    def __init__(
        self,
        provider: "RunPodProvider",
        request: ChatRequest,
        context: GenerationContext,
        endpoint: "EndpointConfig",
    ) -> None:
        self.provider = provider
        self.request = request
        self.context = context
        self.endpoint = endpoint
        self.calls = self._calls_for(endpoint.endpoint_id)
        self._all_calls = [self.calls]
        self.job_id: str | None = None
        self.status: str | None = None
        self.decoder = OutputDecoder()
        self.emitted: list[str] = []
        #: True when earlier items may be missing: take the text from /status at the end
        self.catching_up = False
        #: the last /stream read came with a terminal status: check the text against /status
        self.verify_tail = False
        self.reattached = False
        self.wait_supported: bool | None = None
        #: a terminal status was handled (a late cancel then has nothing left to stop)
        self.finished = False
        self._cancel_lock = threading.Lock()
        self._cancel_sent = False

    # -- entry point -------------------------------------------------------------------------

    def run(self) -> Iterator[Chunk]:
        """Generate the reply: reattach to the saved job if it is usable, else start one."""
        try:
            saved = (self.context.resume_state or {}).get("runpod_job_id")
            done = False
            if saved:
                done = yield from self._reattach(str(saved))
            if not done and not self._cancelled():
                self._submit()
                yield self._ids_chunk()
                yield from self._follow_and_finish()
        except Interrupted:
            pass  # cancelled while waiting to retry a request
        except ProviderError as exc:
            # A transient failure leaves the job running so a retried attempt can reattach to
            # it; a permanent one (e.g. output we cannot parse) would only keep paying for GPU.
            if not exc.retryable and not self.finished:
                self.stop_upstream()
            raise
        if self._cancelled() and not self.finished:
            self.stop_upstream()
            # RunPod bills the seconds that ran before the cancel: hand the host those facts.
            info = self._status_after_cancel()
            if info is not None:
                yield Chunk(meta=self._meta(info))

    def stop_upstream(self) -> None:
        """``POST /cancel`` for the job, at most once; safe to call from any thread."""
        with self._cancel_lock:
            if self._cancel_sent or not self.job_id:
                return
            self._cancel_sent = True
        try:
            self.calls.cancel(self.job_id)
            log.info("cancelled RunPod job %s", self.job_id)
        except ProviderError as exc:
            log.warning("could not cancel RunPod job %s: %s", self.job_id, exc.message)

    @property
    def api_calls(self) -> int:
        """HTTP calls this attempt made so far."""
        return sum(c.calls for c in self._all_calls)

    # -- submit / reattach -------------------------------------------------------------------

    def _submit(self) -> None:
        job_input: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in self.request.messages],
            "sampling_params": {k: self.request.params[k] for k in SAMPLING_KEYS
                                if self.request.params.get(k) is not None},
            "stream": True,
        }
        fault = self.request.params.get("emulator_fault")
        if fault:  # a testing aid: the bundled RunPod emulator injects this fault
            job_input["emulator_fault"] = fault
        policy = {"executionTimeout": self.provider.execution_timeout_ms(self.context)}
        data = self.calls.run(job_input, policy)
        self.job_id = str(data["id"])
        self.status = str(data.get("status") or "IN_QUEUE")
        try:
            self.context.save_state({"runpod_job_id": self.job_id,
                                     "endpoint_id": self.endpoint.endpoint_id})
        except Exception:
            # Without the saved id a retry could not reattach: do not leave a paid orphan running.
            self.stop_upstream()
            raise
        log.info("RunPod job %s started on endpoint %s", self.job_id, self.endpoint.endpoint_id)

    def _reattach(self, job_id: str) -> Generator[Chunk, None, bool]:
        """Pick up the job an earlier attempt started. Returns True when the reply was produced."""
        saved_endpoint = str(self.context.resume_state.get("endpoint_id") or
                             self.endpoint.endpoint_id)
        endpoint = self.provider.endpoint_by_id(saved_endpoint) or self.endpoint
        calls = self._calls_for(saved_endpoint)
        self._all_calls.append(calls)
        info = calls.status(job_id)
        status = (info or {}).get("status")
        if info is None or status in ("FAILED", "TIMED_OUT", "CANCELLED") or (
            status == "COMPLETED" and not has_output(info.get("output"))
        ):
            log.info("RunPod job %s cannot be reattached (%s); starting a new job",
                     job_id, status or "expired")
            return False
        self.endpoint, self.calls, self.job_id = endpoint, calls, job_id
        self.reattached = True
        self.status = str(status)
        log.info("reattached to RunPod job %s (%s)", job_id, status)
        yield self._ids_chunk()
        if status == "COMPLETED":
            yield from self._finish("COMPLETED", info)
            return True
        # Items an earlier attempt consumed are gone from /stream: unless the job has not
        # started yet, stream nothing now and take the full text from /status at the end.
        self.catching_up = status != "IN_QUEUE"
        yield from self._follow_and_finish()
        return True

    # -- following ---------------------------------------------------------------------------

    def _follow_and_finish(self) -> Iterator[Chunk]:
        status = yield from self._follow()
        if status is not None:
            yield from self._finish(status, None)

    def _follow(self) -> Generator[Chunk, None, str | None]:
        """Poll ``/stream`` until the job ends; return its terminal status (None: we cancelled)."""
        assert self.job_id
        provider = self.provider
        pacer = Pacer(provider.poll, provider.wait_supported(self.endpoint.endpoint_id),
                      lambda: provider.mark_wait_ignored(self.endpoint.endpoint_id))
        last_progress = time.monotonic()
        while True:
            if self._cancelled():
                return None
            if time.time() >= self.context.deadline:
                self.stop_upstream()
                raise ProviderTimeout(
                    f"RunPod job {self.job_id} did not finish before the reply's deadline; it was "
                    "cancelled. Lower max_tokens or raise the job timeout.",
                    details=self._ids(),
                )
            poll = self.calls.stream(self.job_id, pacer.wait_ms(self.context.seconds_left()))
            if poll.maybe_lost and not self.catching_up:
                log.warning("RunPod job %s: a retried /stream read may have lost items; "
                            "taking the text from /status at the end", self.job_id)
                self.catching_up = True
            changed = poll.status != self.status
            chunk = self._status_chunk(poll.status)
            if chunk is not None:
                yield chunk
            for item in poll.items:
                if self.catching_up:
                    continue  # the decoder cannot span a gap; /status has everything
                text = self.decoder.feed(item_output(item))
                if text:
                    self.emitted.append(text)
                    yield Chunk(text=text)
            if poll.status in TERMINAL:
                # A finished job's items all exist already, so this read had the last of them:
                # rather than one more /stream call to see an empty list, the final /status (read
                # anyway for billing) holds the whole output to check the text against.
                self.verify_tail = bool(poll.items)
                return poll.status
            now = time.monotonic()
            if poll.items or changed:
                last_progress = now
            elif self.status == "IN_PROGRESS" and now - last_progress > provider.stall_timeout_s:
                self.stop_upstream()
                raise ProviderTimeout(
                    f"RunPod job {self.job_id} made no progress for {provider.stall_timeout_s:g} s "
                    "(no output, no status change) and was cancelled. Try again; raise "
                    "RUNPOD_STALL_TIMEOUT_S if the model legitimately pauses this long.",
                    details=self._ids(),
                )
            delay = pacer.next_delay(poll, changed)
            self.wait_supported = pacer.use_wait
            if delay and self.context.cancelled.wait(delay):
                return None

    def _status_chunk(self, status: str) -> Chunk | None:
        previous, self.status = self.status, status
        shown = STATUS_CHUNKS.get(status)
        if shown and (previous is None or STATUS_CHUNKS.get(previous) != shown):
            return Chunk(status=shown)
        return None

    # -- finishing ---------------------------------------------------------------------------

    def _finish(self, status: str, info: dict[str, Any] | None) -> Iterator[Chunk]:
        """Turn a terminal status into the last chunks or an error."""
        self.finished = True
        need_output = status == "COMPLETED" and (self.catching_up or self.decoder.yields == 0)
        if self.verify_tail and status == "COMPLETED" and not need_output and info is None:
            info = self._final_status(required=False)
        if info is None:
            info = self._final_status(required=need_output or status == "FAILED")
        meta = self._meta(info)
        if status == "COMPLETED":
            tail = self._completed_tail(info)
            if tail:
                yield Chunk(text=tail)
            usage = self.decoder.usage(self._prompt_tokens())
            yield Chunk(usage=usage, finish_reason=self._finish_reason(usage.output_tokens),
                        meta=meta)
            return
        yield Chunk(meta=meta)  # billing facts are kept even when the reply fails
        details = self._ids()
        if status == "FAILED":
            message, extra = job_error_message((info or {}).get("error"))
            raise ProviderError(f"RunPod job {self.job_id} failed in the worker: {message}",
                                details={**details, **extra})
        if status == "TIMED_OUT":
            raise ProviderTimeout(
                f"RunPod stopped job {self.job_id} at its executionTimeout. Lower max_tokens, or "
                "raise RUNPOD_EXECUTION_TIMEOUT_S (and the job timeout above it).",
                details=details,
            )
        if status == "CANCELLED" and self._cancelled():
            return
        raise ProviderError(
            f"RunPod job {self.job_id} ended as {status} without us asking (cancelled in the "
            "RunPod console or by another API client?). Regenerate the reply.",
            details=details,
        )

    def _completed_tail(self, info: dict[str, Any] | None) -> str:
        """Text not yielded yet: the decoder's remainder, or the gap filled from /status."""
        if not self.catching_up and self.decoder.yields:
            rest = self.decoder.flush()
            output = (info or {}).get("output") if self.verify_tail else None
            if has_output(output):
                full, seen = decode_output(output), "".join(self.emitted) + rest
                if len(full.text) > len(seen) and full.text.startswith(seen):
                    log.info("RunPod job %s: the final output had text the stream had not given yet",
                             self.job_id)
                    self.decoder = full
                    return rest + full.text[len(seen):]
            return rest
        output = (info or {}).get("output")
        if not has_output(output):
            if self.catching_up:
                raise ProviderError(
                    f"Part of RunPod job {self.job_id}'s stream was lost and RunPod kept no final "
                    "output to recover it from. Regenerate the reply.", details=self._ids())
            raise ProviderError(
                f"RunPod job {self.job_id} finished as COMPLETED but with no output: the worker "
                "did not post its result (a known RunPod quirk). Regenerate the reply; if it keeps "
                "happening, check the endpoint's worker logs.", details=self._ids())
        full = decode_output(output)
        self.decoder = full
        emitted = "".join(self.emitted)
        if not full.text.startswith(emitted):
            log.warning("RunPod job %s: streamed text is not a prefix of the final output",
                        self.job_id)
        return full.text[len(emitted):]

    def _status_after_cancel(self, timeout_s: float = 5.0) -> dict[str, Any] | None:
        """The job's envelope once RunPod has stopped it (its executionTime is what we pay)."""
        if not self.job_id:
            return None
        deadline = time.monotonic() + timeout_s
        info: dict[str, Any] | None = None
        while True:
            try:
                info = self.calls.status(self.job_id, after_stop=True)
            except ProviderError as exc:
                log.warning("RunPod job %s: /status after cancel failed (%s)", self.job_id, exc.message)
                return info
            if info is None or info.get("status") in TERMINAL or time.monotonic() >= deadline:
                return info
            time.sleep(0.2)

    def _final_status(self, required: bool) -> dict[str, Any] | None:
        try:
            info = self.calls.status(self.job_id or "")
        except (ProviderError, Interrupted) as exc:
            if required:
                raise
            log.warning("RunPod job %s: final /status failed (%s); no billing facts",
                        self.job_id, getattr(exc, "message", exc))
            return None
        if info is None and required:
            raise ProviderError(
                f"RunPod no longer knows job {self.job_id}, so its output cannot be read. "
                "Regenerate the reply.", details=self._ids())
        return info

    # -- small helpers -----------------------------------------------------------------------

    def _cancelled(self) -> bool:
        return self.context.cancelled.is_set()

    def _calls_for(self, endpoint_id: str) -> JobCalls:
        return self.provider.client.job(endpoint_id, stop=self.context.cancelled,
                                        deadline=self.context.deadline)

    def _ids(self) -> dict[str, Any]:
        return {"runpod_job_id": self.job_id, "endpoint_id": self.endpoint.endpoint_id}

    def _ids_chunk(self) -> Chunk:
        meta = self._ids()
        if self.reattached:
            meta["reattached"] = True
        return Chunk(status=STATUS_CHUNKS.get(self.status or ""), meta=meta)

    def _meta(self, info: dict[str, Any] | None) -> dict[str, Any]:
        meta: dict[str, Any] = self._ids()
        info = info or {}
        for key, name in (("executionTime", "execution_ms"), ("delayTime", "delay_ms"),
                          ("workerId", "worker_id")):
            if info.get(key) is not None:
                meta[name] = info[key]
        meta["api_calls"] = self.api_calls
        if self.decoder.format:
            meta["output_format"] = self.decoder.format
        if self.wait_supported is not None:
            meta["stream_wait"] = self.wait_supported
        if self.reattached:
            meta["reattached"] = True
        if self.endpoint.gpu:
            meta["gpu"] = self.endpoint.gpu
        if self.endpoint.price_per_second is not None:
            meta["price_per_second_usd"] = self.endpoint.price_per_second
        return meta

    def _prompt_tokens(self) -> int:
        return sum(estimate_tokens(m.content) for m in self.request.messages)

    def _finish_reason(self, output_tokens: int) -> str:
        if self.decoder.finish_reason:
            return self.decoder.finish_reason
        # The classic format has no finish reason: hitting max_tokens means it was cut.
        max_tokens = self.request.params.get("max_tokens")
        if max_tokens and self.decoder.output_tokens is not None and output_tokens >= int(max_tokens):
            return "length"
        return "stop"
