"""Built-in personas."""
from __future__ import annotations

from typing import Any, Mapping

from chatapp.hookspecs import hookimpl
from chatapp.models import Persona


@hookimpl
def register_personas(config: Mapping[str, Any]) -> list[Persona]:
    return [
        Persona(
            name="assistant",
            display_name="Assistant",
            description="A helpful general assistant.",
            system_prompt="You are a helpful, honest assistant. Answer clearly and concisely.",
            greeting="Hi! How can I help?",
        ),
    ]
