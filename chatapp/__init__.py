"""chatapp: a self-hostable LLM chat backend (Flask, RQ, Redis, pluggy)."""
from chatapp.hookspecs import hookimpl
from chatapp.models import (
    CachedReply,
    ChatRequest,
    Chunk,
    Cost,
    Feedback,
    FinishedReply,
    GenerationContext,
    GenerationResult,
    Message,
    ModelInfo,
    Persona,
    Provider,
    Step,
    Usage,
)

__all__ = [
    "hookimpl", "create_app", "CachedReply", "ChatRequest", "Chunk", "Cost", "Feedback", "FinishedReply",
    "GenerationContext", "GenerationResult", "Message", "ModelInfo", "Persona", "Provider", "Step", "Usage",
]


def create_app(test_config=None, **kwargs):  # noqa: D103 - documented in chatapp.app
    from chatapp.app import create_app as _create_app

    return _create_app(test_config, **kwargs)
