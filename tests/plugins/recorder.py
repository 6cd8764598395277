"""A test plugin that records every hook call it sees, and can be told to refuse or answer."""
from __future__ import annotations

from typing import Any

from chatapp import hookimpl
from chatapp.errors import BudgetExhausted
from chatapp.models import CachedReply, Cost, Usage

calls: list[tuple[str, Any]] = []
settings: dict[str, Any] = {}


def after_calls(mid: str, timeout: float = 10.0, settle: float = 0.5) -> list[Any]:
    """after_generation calls for reply ``mid``: waits for the first (the outbox is async), then a
    little longer so a duplicate would show up too."""
    import time

    deadline = time.time() + timeout
    found: list[Any] = []
    while time.time() < deadline:
        found = [c[1] for c in calls if c[0] == "after_generation" and c[1][0] == mid]
        if found:
            time.sleep(settle)
            return [c[1] for c in calls if c[0] == "after_generation" and c[1][0] == mid]
        time.sleep(0.05)
    return found


def reset() -> None:
    calls.clear()
    settings.clear()


@hookimpl
def before_generation(request):
    calls.append(("before_generation", request.message_id))
    if settings.get("refuse"):
        raise BudgetExhausted("Budget used up for today.", details={"remaining_usd": 0})


@hookimpl
def generation_refused(request, reason):
    calls.append(("generation_refused", (request.message_id, reason)))


@hookimpl
def get_cached_reply(request):
    calls.append(("get_cached_reply", request.message_id))
    text = settings.get("cached", {}).get(request.prompt_text)
    if text:
        return CachedReply(text=text, usage=Usage(3, 2), cost_saved_micros=1234)
    return None


@hookimpl
def price_generation(request, result):
    calls.append(("price_generation", request.message_id))
    if "price_micros" in settings:
        return Cost(settings["price_micros"], {"source": "recorder"})
    return None


@hookimpl
def after_generation(request, result):
    calls.append(("after_generation", (request.message_id, result.state, result.text, result.cached)))


@hookimpl
def after_generation_batch(replies):
    calls.append(("after_generation_batch", [(r.request.message_id, r.result.state, r.result.text) for r in replies]))
