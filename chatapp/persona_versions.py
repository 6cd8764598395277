"""Pinned persona versions: a conversation keeps the persona it started with.

A persona's version is its ``content_hash()``; the first conversation that uses a version stores
a snapshot under ``P persona:<hash>`` (versions never change, so each process caches them).
Editing a persona (a new plugin release, a changed file in CHATAPP_PERSONAS_DIR) creates a new
version for new conversations and never rewrites old ones; PATCHing a conversation's persona
pins the persona's current version.
"""
from __future__ import annotations

import json
import threading

import redis

from chatapp.models import Persona


class PersonaVersions:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis, self.p = client, prefix
        self._cache: dict[str, Persona] = {}
        self._lock = threading.Lock()

    def pin(self, persona: Persona) -> str:
        """Store this version (once) and return its id."""
        version = persona.content_hash()
        if version not in self._cache:
            self.redis.set(f"{self.p}persona:{version}", json.dumps(persona.to_dict(), default=str), nx=True)
            with self._lock:
                self._cache[version] = persona
        return version

    def get(self, version: str) -> Persona | None:
        found = self._cache.get(version)
        if found is None:
            raw = self.redis.get(f"{self.p}persona:{version}")
            if raw is None:
                return None
            found = Persona.from_dict(json.loads(raw))
            with self._lock:
                self._cache[version] = found
        return found
