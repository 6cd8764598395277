"""REST: personas and providers from all plugins."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify

from chatapp.auth import TICKET_TTL_S, authenticate, issue_ticket, load_user
from chatapp.errors import NotFound

bp = Blueprint("catalog", __name__)
bp.before_request(authenticate)


def persona_resource(persona: Any) -> dict[str, Any]:
    data = persona.to_dict()
    data.pop("extra", None)
    return data


@bp.get("/personas")
def personas() -> Any:
    catalog = current_app.extensions["chatapp"].catalog
    return jsonify({"items": [persona_resource(p) for p in catalog.personas.values()],
                    "default": current_app.config.get("DEFAULT_PERSONA")})


@bp.get("/personas/<name>")
def persona(name: str) -> Any:
    found = current_app.extensions["chatapp"].catalog.personas.get(name)
    if found is None:
        raise NotFound(f"No persona named {name!r}.", code="persona_not_found")
    return jsonify(persona_resource(found))


@bp.post("/ws-tickets")
def ws_ticket() -> Any:
    """A one-time, 30-second ticket for opening /ws?ticket=... from a browser."""
    ext = current_app.extensions["chatapp"]
    return jsonify({"ticket": issue_ticket(ext.redis, ext.prefix, load_user()), "expires_in": TICKET_TTL_S}), 201


@bp.get("/providers")
def providers() -> Any:
    catalog = current_app.extensions["chatapp"].catalog
    return jsonify({"items": [p.to_dict() for p in catalog.providers.values()], "default": catalog.default_provider})
