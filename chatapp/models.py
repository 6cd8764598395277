"""Plain dataclasses that plugins see and return.

These are the plugin-facing values of the contract in ``chatapp.hookspecs``: plugins build and read
them and never touch Flask, marshmallow or Redis objects. Everything here is JSON-able through
``to_dict``/``from_dict`` so job functions can pass ids and plain values, as RQ wants.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

#: Message states (DESIGN.md section 5). The last three are terminal.
QUEUED, GENERATING, DONE, FAILED, CANCELLED = "queued", "generating", "done", "failed", "cancelled"
TERMINAL_STATES = frozenset({DONE, FAILED, CANCELLED})


@dataclass
class Usage:
    """Token counts of one generation."""

    input_tokens: int = 0
    output_tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Usage":
        data = data or {}
        return cls(int(data.get("input_tokens", 0)), int(data.get("output_tokens", 0)))


@dataclass
class Message:
    """One turn of a prompt, as a provider receives it."""

    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass
class Step:
    """One labelled part of a structured reply (e.g. analyze -> think -> answer)."""

    name: str  # machine name, e.g. "analyze"
    label: str = ""  # shown to people, e.g. "Analysis"
    instruction: str = ""  # what the model is told to do in this part


#: who shares a persona's cached replies: each user alone, everyone using the persona, or anyone
CACHE_SCOPES = ("user", "persona", "global")


@dataclass
class Persona:
    """A character or assistant: its system prompt and defaults.

    Only ``name`` is required; a persona package usually sets ``system_prompt``, ``description``
    and ``greeting`` too. ``system_prompt`` is a template: ``{{user}}`` (the user's name),
    ``{{char}}`` (the display name), ``{{date}}`` (today, UTC) and ``{{original}}`` (the app's
    default system prompt, as character cards use it) are filled in when a prompt is rendered.
    """

    name: str
    system_prompt: str = ""
    description: str = ""
    greeting: str = ""
    display_name: str = ""
    #: more opening lines a client may offer instead of ``greeting``
    alternate_greetings: list[str] = field(default_factory=list)
    #: example exchanges shown to the model after the system prompt (card ``mes_example`` style)
    example_dialogue: str = ""
    #: default sampling parameters (temperature, max_tokens, top_p)
    params: dict[str, Any] = field(default_factory=dict)
    provider: str | None = None
    model: str | None = None
    #: how many prompt tokens of history this persona may use; None: the app's default
    history_budget: int | None = None
    #: structured replies: each step streamed as its own labelled part
    steps: list[Step] = field(default_factory=list)
    #: caching: None (follow the request), or "user" / "persona" / "global" (see CACHE_SCOPES)
    cache_scope: str | None = None
    #: notes for people (e.g. a card's creator_notes); never sent to the model
    creator_notes: str = ""
    tags: list[str] = field(default_factory=list)
    #: anything else a plugin wants to carry along (kept, never interpreted by the host; card
    #: importers keep unknown fields and extensions here so export gives the same card back)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["display_name"] = self.display_name or self.name
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Persona":
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["steps"] = [s if isinstance(s, Step) else Step(**s) for s in values.get("steps") or []]
        return cls(**values)

    def content_hash(self) -> str:
        """A version id of everything that shapes replies: a conversation pins the version it
        started with, so editing a persona never silently rewrites old chats."""
        import hashlib
        import json

        data = self.to_dict()
        for key in ("description", "creator_notes", "tags", "alternate_greetings", "greeting"):
            data.pop(key, None)
        raw = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]


@dataclass
class ModelInfo:
    """One model (or endpoint) a provider serves."""

    id: str
    description: str = ""
    context_tokens: int = 8192


@dataclass
class ChatRequest:
    """Everything a provider needs for one reply, rendered by the host.

    ``messages`` is the final prompt: the persona's system prompt, the history that fits the
    token budget, and the new user message last.
    """

    message_id: str
    conversation_id: str
    user_id: str
    provider: str
    model: str
    messages: list[Message]
    params: dict[str, Any] = field(default_factory=dict)
    persona: Persona | None = None
    #: "use" (default), "refresh" (skip the lookup, store the result) or "skip" (neither)
    cache: str = "use"

    @property
    def prompt_text(self) -> str:
        """The last user message's text."""
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")


@dataclass
class Chunk:
    """What a provider yields while streaming: text, a status change, and finally usage."""

    text: str = ""
    #: "provider_queued" or "generating", shown to the client as a status frame
    status: str | None = None
    usage: Usage | None = None
    #: "stop" or "length" on the last chunk, when the provider knows
    finish_reason: str | None = None
    #: provider facts worth keeping with the reply (e.g. RunPod executionTime); merged
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Cost:
    """The price of one generation, in integer micro-dollars."""

    micros: int
    #: how it was computed (e.g. {"gpu_seconds": 3, "price_per_second_micros": 190})
    breakdown: dict[str, Any] = field(default_factory=dict)

    @property
    def usd(self) -> float:
        return self.micros / 1_000_000


@dataclass
class CachedReply:
    """A stored answer returned by ``get_cached_reply``."""

    text: str
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = "stop"
    #: what the original generation cost: recorded as savings, never charged
    cost_saved_micros: int = 0


@dataclass
class GenerationResult:
    """How one reply ended; handed to ``price_generation`` and ``after_generation``."""

    message_id: str
    state: str  # done | failed | cancelled
    text: str
    finish_reason: str | None = None  # stop | length | cancelled (None when failed)
    usage: Usage = field(default_factory=Usage)
    provider: str = ""
    model: str = ""
    cached: bool = False
    error: dict[str, Any] | None = None
    started_at: float = 0.0
    first_token_at: float | None = None
    finished_at: float = 0.0
    attempt: int = 1
    meta: dict[str, Any] = field(default_factory=dict)
    cost: Cost | None = None


@dataclass
class FinishedReply:
    """One reply of an ``after_generation_batch`` call: what ``after_generation`` got for it."""

    request: "ChatRequest"
    result: GenerationResult


@dataclass
class Feedback:
    """A user's rating of one reply; handed to ``after_feedback``. ``previous_rating`` is what
    this user had said of it before (None the first time), so counters can move, not double."""

    message_id: str
    conversation_id: str
    user_id: str
    rating: str  # up | down
    comment: str = ""
    previous_rating: str | None = None
    persona: str = ""
    provider: str = ""
    model: str = ""
    at: float = 0.0


@dataclass
class GenerationContext:
    """Per-attempt handle a provider receives next to the request.

    ``resume_state`` holds what an earlier attempt of the same reply saved with ``save_state``
    (e.g. a RunPod job id), so a retried job can reattach instead of paying twice. ``cancelled``
    is set from another thread when the user presses Stop.
    """

    message_id: str
    attempt: int = 1
    resume_state: dict[str, Any] = field(default_factory=dict)
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: absolute time.time() by which the provider must be done (the job's own deadline)
    deadline: float = field(default_factory=lambda: time.time() + 600)
    save_state: Callable[[dict[str, Any]], None] = lambda state: None

    def seconds_left(self) -> float:
        return max(0.0, self.deadline - time.time())


@dataclass
class Provider:
    """A text generator. Subclass it and implement ``stream``; ``cancel`` is optional.

    ``stream`` runs in a worker thread and yields ``Chunk`` objects; it raises a
    ``chatapp.errors.ProviderError`` (or subclass) for failures, translating its own exceptions
    with ``raise ... from exc``. Once ``context.cancelled`` is set it should stop the upstream
    work and return promptly; it may first yield one last ``Chunk`` with ``usage``/``meta``
    describing what ran (text yielded after Stop is dropped; what the upstream billed is kept).
    On a resumed attempt (``context.attempt > 1``) it yields the reply from its beginning again:
    the host skips the text that was already delivered.
    """

    id: str
    name: str = ""
    models: list[ModelInfo] = field(default_factory=list)
    default_model: str = ""
    description: str = ""

    def stream(self, request: ChatRequest, context: GenerationContext) -> Iterator[Chunk]:
        raise NotImplementedError

    def cancel(self, context: GenerationContext) -> None:
        """Tell the upstream service to stop (called once, from another thread)."""

    def price(self, request: ChatRequest, result: GenerationResult) -> Cost | None:
        """The provider's own price for a finished generation, used by the fallback pricer."""
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name or self.id,
            "description": self.description,
            "default_model": self.default_model or (self.models[0].id if self.models else ""),
            "models": [asdict(m) for m in self.models],
        }
