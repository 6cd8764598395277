"""The ``chatapp`` Flask extension: every shared piece of one process, in ``app.extensions``."""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from chatapp.auth import Users
from chatapp.catalog import Catalog
from chatapp.config import split_list
from chatapp.host import Host
from chatapp.persona_versions import PersonaVersions
from chatapp.plugin_manager import make_plugin_manager
from chatapp.redis_client import RedisClients, connect
from chatapp.relay import Relay
from chatapp.replies import Replies
from chatapp.reply_queue import ReplyQueue
from chatapp.scripts import Scripts
from chatapp.socket_session import SocketRegistry
from chatapp.store import Store

log = logging.getLogger(__name__)


class ChatApp:
    """Holds the Redis clients, plugin manager, catalog, store, queue and relay of a process."""

    def __init__(self, app: Flask | None = None, **kwargs: Any) -> None:
        if app is not None:
            self.init_app(app, **kwargs)

    def init_app(self, app: Flask, redis_clients: RedisClients | None = None, extra_plugins: tuple = ()) -> None:
        from chatapp.chat import ChatService

        config = app.config
        self.config = config
        if redis_clients is None:
            url = config.get("REDIS_URL")
            if not url:
                raise RuntimeError(
                    "REDIS_URL is not set. Set it to your Redis (redis:// or rediss://), or run the "
                    "all-in-one embedded app with `python -m chatapp`.")
            # a worker runs many replies at once, each appending events: it gets a larger pool
            pool_size = config["WORKER_REDIS_MAX_CONNECTIONS" if config.get("PROCESS_ROLE") == "worker"
                               else "REDIS_MAX_CONNECTIONS"]
            redis_clients = connect(url, int(pool_size),
                                    verify_tls=bool(config.get("REDIS_TLS_VERIFY", False)))
        self.clients = redis_clients
        self.redis = redis_clients.text
        self.prefix = config["KEY_PREFIX"]
        self.scripts = Scripts(self.redis, int(config["FIREHOSE_MAXLEN"]))
        self.store = Store(self.redis, self.scripts, self.prefix)
        self.replies = Replies(self.redis, self.scripts, self.prefix, config)
        self.users = Users(self.redis, self.prefix)
        self.host = Host(config, self.redis, self.prefix)
        self.persona_versions = PersonaVersions(self.redis, self.prefix)
        self.queue = ReplyQueue(redis_clients.raw, config["QUEUE_NAME"], int(config["JOB_TIMEOUT_S"]))
        self.pm = make_plugin_manager(split_list(config.get("DISABLED_PLUGINS")), extra_plugins,
                                      split_list(config.get("PLUGINS")))
        self.catalog = Catalog(self.pm, config)
        self.sockets = SocketRegistry()
        self.relay = Relay(self.redis, self.prefix, block_ms=int(config["RELAY_BLOCK_MS"]))
        self.chat = ChatService(self)
        app.extensions["chatapp"] = self

    def live_workers(self) -> int:
        """Worker processes whose heartbeat is current."""
        import time

        return self.redis.zcount(self.prefix + "workers", int(time.time() * 1000), "+inf")
