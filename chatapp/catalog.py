"""Providers and personas collected from every plugin, and how a request picks one of each."""
from __future__ import annotations

import logging
from typing import Any, Mapping

import pluggy

from chatapp.errors import InvalidRequest
from chatapp.models import Persona, Provider

log = logging.getLogger(__name__)


class Catalog:
    """The providers and personas the plugins registered, by id and name."""

    def __init__(self, pm: pluggy.PluginManager, config: Mapping[str, Any]) -> None:
        self.pm = pm
        self.config = config
        self.providers: dict[str, Provider] = {}
        for batch in reversed(pm.hook.register_providers(config=config)):
            for provider in batch or []:
                if provider.id in self.providers:
                    log.error("provider id %r registered twice; keeping the first", provider.id)
                    continue
                self.providers[provider.id] = provider
        self.personas: dict[str, Persona] = {}
        self.reload_personas()
        configured = config.get("DEFAULT_PROVIDER")
        if configured and configured not in self.providers:
            log.error("CHATAPP_DEFAULT_PROVIDER=%r is not a registered provider (have: %s)",
                      configured, ", ".join(sorted(self.providers)))
        self.default_provider = configured or ("runpod" if "runpod" in self.providers else "echo")

    def reload_personas(self) -> None:
        """Ask the plugins again (oldest-registered first, so later plugins override)."""
        personas: dict[str, Persona] = {}
        for batch in reversed(self.pm.hook.register_personas(config=self.config)):
            for persona in batch or []:
                if persona.name in personas:
                    log.info("persona %r redefined by a later plugin", persona.name)
                personas[persona.name] = persona
        self.personas = personas

    def provider(self, provider_id: str | None) -> Provider:
        provider_id = provider_id or self.default_provider
        try:
            return self.providers[provider_id]
        except KeyError:
            raise InvalidRequest(
                f"Unknown provider {provider_id!r}; GET /api/v1/providers lists them.",
                code="unknown_provider", details={"provider": provider_id},
            ) from None

    def persona(self, name: str | None) -> Persona | None:
        name = name or self.config.get("DEFAULT_PERSONA")
        if not name:
            return None
        persona = self.personas.get(name)
        if persona is None:
            if name == self.config.get("DEFAULT_PERSONA"):
                return None  # no persona plugin loaded: plain chat
            raise InvalidRequest(f"Unknown persona {name!r}; GET /api/v1/personas lists them.",
                                 code="unknown_persona", details={"persona": name})
        return persona

    def model_for(self, provider: Provider, model: str | None) -> str:
        ids = [m.id for m in provider.models]
        if model:
            if ids and model not in ids:
                raise InvalidRequest(f"Provider {provider.id!r} has no model {model!r}; have {ids}.",
                                     code="unknown_model", details={"model": model})
            return model
        return provider.default_model or (ids[0] if ids else "")
