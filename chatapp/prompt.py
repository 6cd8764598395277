"""Prompt rendering: the persona's system prompt plus as much history as fits a token budget."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Iterable, Sequence

from chatapp.models import Message, Persona


def estimate_tokens(text: str) -> int:
    """A provider-neutral estimate (about four characters a token), good enough for budgeting."""
    return (len(text) + 3) // 4 or 1


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


def estimate_prompt_tokens(messages: Iterable[Message]) -> int:
    """``estimate_tokens`` summed over a prompt's messages (inlined: a history may hold hundreds)."""
    return sum((len(m.content) + 3) // 4 or 1 for m in messages)


def render_messages(persona: Persona | None, history: Sequence[Message], new_user_text: str | None,
                    budget_tokens: int, user_name: str = "User", default_prompt: str = "") -> list[Message]:
    """System prompt, then the newest turns that fit ``budget_tokens``, oldest first.

    ``history`` holds the conversation's usable turns, oldest first (the history scripts leave
    failed and unfinished replies out). ``new_user_text`` is appended last when given (the web
    side renders before storing). The newest user turn is always kept, even when it alone exceeds
    the budget.
    """
    turns = [*history, Message("user", new_user_text)] if new_user_text is not None else list(history)
    system = system_text(persona, user_name, default_prompt)
    remaining = budget_tokens - (estimate_tokens(system) if system else 0)
    first = len(turns)  # the oldest turn kept
    while first > 0:
        cost = (len(turns[first - 1].content) + 3) // 4 or 1  # estimate_tokens, inlined (hundreds of turns)
        if cost > remaining and first < len(turns):
            break
        remaining -= cost
        first -= 1
    return ([Message("system", system)] if system else []) + turns[first:]
