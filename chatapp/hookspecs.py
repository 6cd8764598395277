"""The plugin contract: every hook chatapp calls, with its arguments and when it runs.

Plugins implement hooks with ``@chatapp.hookimpl``. pluggy passes arguments by name and an
implementation may accept any subset of them. Unless a hook says "first result wins", every
implementation runs and the results are collected in a list (newest-registered plugin first).
Built-in behaviour ships as ordinary plugins in ``plugins/`` (see ``plugins.DEFAULT_PLUGINS``);
third-party packages register under the ``chatapp`` entry-point group.

Per-request hooks also receive ``host`` (``chatapp.host.Host``): the app's settings and a Redis
client with ``host.key(...)`` for keys in the app's namespace, so plugins keep no global state.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from chatapp.host import Host
    from chatapp.models import (
        CachedReply, ChatRequest, Cost, Feedback, FinishedReply, GenerationResult, Persona, Provider,
    )

PROJECT = "chatapp"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: how long the built-in after_generation plugins remember that a reply was counted: a redelivery
#: comes within minutes of a worker's death while any worker runs (after 60 s idle); a week covers
#: every worker being down for days with a batch unacknowledged
REDELIVERY_GUARD_S = 7 * 86400


@hookspec
def register_providers(config: "Mapping[str, Any]") -> "list[Provider]":
    """Return a list of ``Provider`` objects this plugin offers.

    Called once at startup in every process (web and worker). ``config`` is the app's settings
    (read-only; includes ``RUNPOD_*`` and ``OPENAI_*``): a provider that is not configured returns
    an empty list. Provider ids must be unique across plugins; a later duplicate is refused with a
    logged error.
    """


@hookspec
def register_personas(config: "Mapping[str, Any]") -> "list[Persona]":
    """Return a list of ``Persona`` objects.

    Called at startup (and again when personas are reloaded) in every process. Persona names are
    unique; on a clash the plugin registered last wins and the clash is logged.
    """


@hookspec(firstresult=True)
def get_cached_reply(request: "ChatRequest", host: "Host") -> "CachedReply | None":
    """Return a stored reply for this request, or None. First non-None result wins.

    Called in the web process before a job is enqueued, unless ``request.cache`` is "refresh" or
    "skip". A hit is answered at once: no job runs, it costs nothing, and the reply streams to the
    client as ordinary frames with ``cached: true``.
    """


@hookspec
def before_generation(request: "ChatRequest", host: "Host") -> None:
    """Inspect a request before it is accepted; raise a ``ChatAppError`` to refuse it.

    Called in the web process for every send, before the cache lookup and before anything is
    stored. Raising ``chatapp.errors.BudgetExhausted`` gives the client a 402, ``RateLimited`` a
    429; nothing is written when a plugin refuses.
    """


@hookspec
def generation_refused(request: "ChatRequest", reason: str, host: "Host") -> None:
    """Let go of what ``before_generation`` set aside for a request that is then not accepted.

    Called in the web process, once, when a send or regenerate got past the start of
    ``before_generation`` but nothing was stored for it after all: ``reason`` is the error code
    the client gets (a later plugin's refusal such as ``budget_exhausted``,
    ``too_many_generations``, ``conversation_not_found``, ...) or ``duplicate`` (a racing resend
    with the same ``client_message_id``: the earlier send stands). ``request.message_id`` is the
    id the reply would have had; no reply with it exists and ``after_generation`` never runs for
    it. Every plugin hears it, including the one that refused. Exceptions are logged.
    """


@hookspec(firstresult=True)
def price_generation(
    request: "ChatRequest", result: "GenerationResult", provider: "Provider | None", host: "Host"
) -> "Cost | None":
    """Return the ``Cost`` of a finished generation, or None to let the next plugin decide.

    Called in the worker after the provider stops (done, failed or cancelled), before the reply is
    stored; first non-None wins. ``result.meta`` carries what the provider reported (e.g. RunPod's
    ``executionTime``); ``provider`` is the ``Provider`` that ran it. A built-in fallback
    (``plugins.pricing``) runs last and asks ``provider.price()``. The cost is stored with the
    reply exactly once, in the same atomic write.
    """


@hookspec
def after_generation(request: "ChatRequest", result: "GenerationResult", host: "Host") -> None:
    """React to a finished reply: store it in a cache, settle a budget, record analytics.

    Called in a worker process once per reply, however it ended (done, failed or cancelled; from
    a job, the cache, Stop while queued, or the reaper), after it is stored: every finish writes
    the reply's id to an outbox stream in the same atomic step, and workers consume it as a
    group. If a worker dies mid-hook another runs it again after 60 s, so make it idempotent.
    A guard that makes it so (a key set once per reply) need only outlive that redelivery: the
    built-in plugins keep theirs ``REDELIVERY_GUARD_S`` (a week), so guards for a month of
    replies do not sit in Redis.
    ``request`` is re-rendered from the stored conversation and ``result`` read back from the
    stored reply. Exceptions are logged and do not affect the reply.
    """


@hookspec
def after_generation_batch(replies: "list[FinishedReply]", host: "Host") -> None:
    """The batch form of ``after_generation``: the same finished replies, many at a time, for
    bookkeeping that costs one Redis round trip for a whole batch instead of one per reply (the
    built-in usage and budget plugins use it). Do a given piece of work in this hook or in
    ``after_generation``, not both.

    Called in a worker process once per batch the outbox hands over (up to 50 replies, in the
    order they finished), after ``after_generation`` ran for each of them; each ``FinishedReply``
    holds the ``request`` and ``result`` that hook got. Each finished reply is in one batch; if a
    worker dies mid-batch, or any hook of the batch raises a Redis error, the whole batch is
    delivered again after 60 s (``after_generation`` included), so make it idempotent. Other
    exceptions are logged and do not affect the replies.
    """


@hookspec
def after_feedback(feedback: "Feedback", host: "Host") -> None:
    """React to a user's thumbs up or down on a reply (analytics, alerts, fine-tuning sets).

    Called in the web process right after ``POST .../messages/<mid>/feedback`` stored the rating
    on the reply, once per call: a user who changes their mind triggers it again with
    ``feedback.previous_rating`` set to the earlier rating, so counters can move rather than
    double. Exceptions are logged; the rating stays stored and the client still gets its 200.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``flask --app wsgi ...`` command line.

    Called once at app creation with ``cli``, the app's click group (``app.cli``): call
    ``cli.add_command(...)``. Commands run inside the app context, so
    ``flask.current_app.extensions["chatapp"]`` is available.
    """


@hookspec
def register_blueprints() -> "list":
    """Return Flask blueprints to mount on the app.

    Called once at app creation in every process. Routes are mounted as given; protect them with
    ``chatapp.auth.require_user`` when they expose user data.
    """
