"""Prompt rendering: the persona's system prompt plus as much history as fits a token budget."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Iterable

from chatapp.models import Message, Persona

USABLE_REPLY_STATES = {"done", "cancelled"}


def estimate_tokens(text: str) -> int:
    """A provider-neutral estimate (about four characters a token), good enough for budgeting."""
    return max(1, (len(text) + 3) // 4)


def fill_template(text: str, *, user: str, char: str, original: str = "") -> str:
    """Fill the placeholders character cards use: {{user}}, {{char}}, {{date}}, {{original}}
    (and the older <USER>/<BOT>), case-insensitively."""
    values = {"user": user, "char": char, "date": datetime.now(timezone.utc).date().isoformat(), "original": original}
    text = re.sub(r"\{\{\s*(user|char|date|original)\s*\}\}", lambda m: values[m.group(1).lower()], text,
                  flags=re.IGNORECASE)
    return text.replace("<USER>", user).replace("<BOT>", char)


def system_text(persona: Persona | None, user_name: str, default_prompt: str) -> str:
    """The persona's system prompt with its placeholders filled, plus its example dialogue."""
    if persona is None:
        return default_prompt
    char = persona.display_name or persona.name
    text = fill_template(persona.system_prompt or "{{original}}", user=user_name, char=char, original=default_prompt)
    if persona.example_dialogue:
        example = fill_template(persona.example_dialogue, user=user_name, char=char)
        text += "\n\nExample dialogue:\n" + example
    return text


def render_messages(persona: Persona | None, history: Iterable[dict[str, str]], new_user_text: str | None,
                    budget_tokens: int, user_name: str = "User", default_prompt: str = "") -> list[Message]:
    """System prompt, then the newest turns that fit ``budget_tokens``, oldest first.

    ``history`` holds stored message hashes, oldest first; failed or empty replies are left out.
    ``new_user_text`` is appended last when given (the web side renders before storing). The newest
    user turn is always kept, even when it alone exceeds the budget.
    """
    turns = [Message(h["role"], h.get("content", "")) for h in history
             if h["role"] == "user" or (h.get("state") in USABLE_REPLY_STATES and h.get("content"))]
    if new_user_text is not None:
        turns.append(Message("user", new_user_text))
    system = system_text(persona, user_name, default_prompt)
    remaining = budget_tokens - (estimate_tokens(system) if system else 0)
    kept: list[Message] = []
    for i, turn in enumerate(reversed(turns)):
        cost = estimate_tokens(turn.content)
        if i > 0 and cost > remaining:
            break
        kept.append(turn)
        remaining -= cost
    kept.reverse()
    return ([Message("system", system)] if system else []) + kept
