"""The fallback pricer: runs last and asks the provider for its own price (else zero)."""
from __future__ import annotations

from chatapp.hookspecs import hookimpl
from chatapp.models import ChatRequest, Cost, GenerationResult, Provider


@hookimpl(trylast=True)
def price_generation(request: ChatRequest, result: GenerationResult, provider: Provider | None) -> Cost:
    if provider is not None:
        cost = provider.price(request, result)
        if cost is not None:
            return cost
    return Cost(0, {"reason": f"provider {request.provider!r} reports no price"})
