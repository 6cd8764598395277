"""Blueprints: REST under /api/v1, the websocket at /ws, and the operational routes."""
from __future__ import annotations

from flask import Flask


def register_api(app: Flask) -> None:
    from chatapp.api import batch, catalog, chat, conversations, meta, versions, web, ws

    app.register_blueprint(conversations.bp, url_prefix="/api/v1")
    app.register_blueprint(versions.bp, url_prefix="/api/v1")
    app.register_blueprint(chat.bp, url_prefix="/api/v1")
    app.register_blueprint(catalog.bp, url_prefix="/api/v1")
    app.register_blueprint(batch.bp, url_prefix="/api/v1")
    app.register_blueprint(meta.bp)
    ws.init_app(app)
    app.register_blueprint(web.bp)  # the web page at /
