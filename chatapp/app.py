"""The application factory."""
from __future__ import annotations

from typing import Any

from flask import Flask

from chatapp import logs
from chatapp.config import load_config
from chatapp.extension import ChatApp
from chatapp.redis_client import RedisClients


def create_app(test_config: dict[str, Any] | None = None, *, redis_clients: RedisClients | None = None,
               extra_plugins: tuple = ()) -> Flask:
    """Build the Flask app: config, the chatapp extension, blueprints (ours and plugins'), CLI."""
    from chatapp import cli, cors, metrics
    from chatapp.api import register_api
    from chatapp.api.errors import init_error_handlers

    app = Flask("chatapp")
    load_config(app, test_config)
    app.json.sort_keys = False
    if not app.testing:
        logs.configure(app.config["LOG_FORMAT"], app.config["LOG_LEVEL"])
    logs.init_request_ids(app)
    ChatApp(app, redis_clients=redis_clients, extra_plugins=extra_plugins)
    init_error_handlers(app)
    metrics.init_app(app)  # first: its request timer starts before CORS may answer a preflight
    cors.init_app(app)
    register_api(app)
    for blueprints in app.extensions["chatapp"].pm.hook.register_blueprints():
        for bp in blueprints or []:
            app.register_blueprint(bp)
    cli.init_app(app)
    return app
