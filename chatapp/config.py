"""Settings: defaults here, then ``CHATAPP_*`` environment variables, then the test config.

``CHATAPP_FOO=bar`` sets ``app.config["FOO"]`` (Flask's ``from_prefixed_env``, which parses JSON
values, so ``CHATAPP_MAX_MESSAGE_BYTES=65536`` is an int). ``REDIS_URL``, ``PORT`` and the
provider variables (``RUNPOD_*``, ``OPENAI_*``) are read by their own names.
"""
from __future__ import annotations

import os
from typing import Any

from flask import Flask

DEFAULTS: dict[str, Any] = {
    # Redis: None means "embedded" (python -m chatapp starts one); the web app then refuses to run.
    "REDIS_URL": None,
    "PROCESS_ROLE": "web",  # "worker" in python -m workers
    "LOG_FORMAT": "json",  # "json" (one object a line, with request/user/reply ids) or "text"
    "LOG_LEVEL": "INFO",
    "KEY_PREFIX": "chatapp:",
    "REDIS_MAX_CONNECTIONS": 6,  # web process pool (+ a third for RQ); waits up to 5 s for a free one
    "WORKER_REDIS_MAX_CONNECTIONS": 32,  # the same, in a worker process running many replies
    # plugins
    "DISABLED_PLUGINS": "",  # comma-separated plugin names
    "PLUGINS": "",  # comma-separated extra plugin modules to import (dotted names)
    "DEFAULT_PROVIDER": None,  # None: runpod if configured, else echo
    "DEFAULT_PERSONA": "assistant",
    "PERSONAS_DIR": None,  # a folder of persona files (YAML, JSON, Character Card JSON or PNG)
    # what {{original}} in a persona's system prompt stands for (and the prompt with no persona)
    "DEFAULT_SYSTEM_PROMPT": "You are a helpful assistant.",
    "BUNDLED_EMULATOR": True,  # no provider configured: use the bundled RunPod emulator
    # response cache (plugins.cache)
    "CACHE_ENABLED": True,
    "CACHE_TTL_S": 24 * 3600,
    "CACHE_SCOPE": "user",  # user | persona | global, unless the persona says otherwise
    # spending limits (plugins.budgets): USD per user per UTC day / month; None = no limit
    "BUDGET_DAILY_USD": None,
    "BUDGET_MONTHLY_USD": None,
    "BUDGET_RESERVE_USD": 0.01,  # held per reply while it runs, settled to the real cost at its end
    # limits
    "RATE_LIMIT_REQUESTS_PER_MINUTE": 600,  # every authenticated REST request, per user (0: off)
    "RATE_LIMIT_SENDS_PER_MINUTE": 60,  # messages sent (REST, /chat, websocket), per user (0: off)
    "MAX_ACTIVE_GENERATIONS": 10,  # replies queued or generating at once, per user (0: off)
    "MAX_SOCKETS_PER_USER": 20,  # open websockets per user, per web process (0: off)
    "MAX_CONTENT_LENGTH": 1024 * 1024,  # any request body (Flask's own setting)
    "MAX_MESSAGE_BYTES": 32 * 1024,
    "MAX_TITLE_CHARS": 200,
    "MAX_TOKENS_LIMIT": 4096,
    "MAX_PAGE_SIZE": 100,
    "DEFAULT_PAGE_SIZE": 20,
    "MAX_WS_FRAME_BYTES": 64 * 1024,
    "HISTORY_TOKEN_BUDGET": 3000,
    # jobs and leases
    "QUEUE_NAME": "chat",
    "JOB_TIMEOUT_S": 600,  # RQ job timeout; RunPod executionTimeout is set below it
    "LEASE_TTL_S": 5.0,  # a worker that stops renewing for this long is presumed dead
    "LEASE_RENEW_S": 0.5,  # also how often Stop is noticed by the worker
    "QUEUE_GRACE_S": 15.0,  # how long a queued reply waits before the reaper checks its job (and again after)
    "MAX_ATTEMPTS": 3,
    "WORKER_CONCURRENCY": 100,  # generations one worker process runs at once
    "WORKER_DRAIN_S": 25,  # on SIGTERM, how long running replies get to finish (then leases hand off)
    # streams
    "STREAM_TTL_S": 24 * 3600,  # a finished reply's event stream is kept this long for resume
    "FIREHOSE_MAXLEN": 100_000,
    "RELAY_BLOCK_MS": 2000,  # the relay's XREAD BLOCK; below redis-py's socket timeout
    "WAIT_TIMEOUT_S": 25.0,  # ?wait=true and /chat; below Heroku's 30 s router timeout
    "IDEMPOTENCY_TTL_S": 24 * 3600,
    # search, export and batch (chatapp.search, chatapp.export, chatapp.batch)
    "SEARCH_SCAN_LIMIT": 2000,  # conversations one ?q= request looks through; next_cursor goes on
    "SEARCH_SCAN_MESSAGES": 20_000,  # messages one ?q= request reads at most (whole conversations)
    "MAX_EXPORT_MESSAGES": 10_000,  # an export holds the first this many messages, and says so
    "MAX_BATCH_PROMPTS": 100,  # prompts in one POST /batch (more: 413)
    "BATCH_TTL_S": 7 * 24 * 3600,  # a batch's record (not its conversations) is kept this long
    # websocket
    "ALLOWED_ORIGINS": "",  # comma-separated; the same host is always allowed
    "SOCKET_QUEUE_SIZE": 2000,  # events buffered for a slow socket before it is told to resume
    "SOCK_SERVER_OPTIONS": {"ping_interval": 25},  # Heroku drops sockets silent for 55 s
    # operations: GET /metrics, CORS, retention (chatapp.metrics, chatapp.cors, chatapp.retention)
    "METRICS_TOKEN": None,  # set: GET /metrics requires "Authorization: Bearer <token>"
    "METRICS_FLUSH_S": 1.0,  # how often a worker adds its metrics to Redis for /metrics
    "CORS_ORIGINS": "",  # comma-separated origins (or *) that may call /api/v1 from a browser; empty: none
    "RETENTION_DAYS": None,  # delete conversations idle this many days; None keeps them forever
    "RETENTION_SWEEP_S": 3600,  # how often a worker sweeps (one sweep at a time across processes)
}

#: variables read by their own names (no CHATAPP_ prefix)
PLAIN_ENV = (
    "REDIS_URL", "PORT", "RUNPOD_API_KEY", "RUNPOD_ENDPOINT_ID", "RUNPOD_BASE_URL", "RUNPOD_GPU",
    "RUNPOD_PRICE_PER_SECOND", "RUNPOD_ENDPOINTS", "RUNPOD_EXECUTION_TIMEOUT_S",
    "RUNPOD_STALL_TIMEOUT_S", "RUNPOD_STREAM_INTERVAL_S", "OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODELS", "OPENAI_PRICES",
)

#: never logged or shown by /-/plugins and friends
SECRET_KEYS = frozenset({"RUNPOD_API_KEY", "OPENAI_API_KEY", "SECRET_KEY", "REDIS_URL", "METRICS_TOKEN"})


def load_config(app: Flask, test_config: dict[str, Any] | None = None) -> None:
    """Fill ``app.config``: defaults, then the environment, then ``test_config``."""
    app.config.from_mapping(DEFAULTS)
    for name in PLAIN_ENV:
        if os.environ.get(name):
            app.config[name] = os.environ[name]
    app.config.from_prefixed_env("CHATAPP")
    if test_config:
        app.config.from_mapping(test_config)
    apply_bundled_emulator(app.config)
    app.config["SOCK_SERVER_OPTIONS"] = {
        **app.config["SOCK_SERVER_OPTIONS"],
        # the transport's hard cap (beyond it the socket closes with 1009); frames between the
        # limit and the cap get an error frame and the socket stays open
        "max_message_size": 4 * int(app.config["MAX_WS_FRAME_BYTES"]),
    }


BUNDLED_ENDPOINT_ID = "local-emulator"
#: where a web process believes the bundled emulator is; only workers call it, at their own address
BUNDLED_PLACEHOLDER_URL = "http://127.0.0.1:9/v2"


def as_bool(value: Any, default: bool = True) -> bool:
    """A setting that is a JSON bool or text: "0", "false", "no" and "off" (any case) are false."""
    if value is None or value == "":
        return default
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off")
    return bool(value)


def provider_configured(settings: Any) -> bool:
    """Whether a real provider is configured (RunPod endpoint(s) or an OpenAI-compatible server)."""
    return any(settings.get(name) for name in ("RUNPOD_ENDPOINT_ID", "RUNPOD_ENDPOINTS", "OPENAI_BASE_URL"))


def apply_bundled_emulator(config: Any) -> None:
    """With no provider configured, the default is the bundled RunPod emulator through the
    ``runpod`` provider (DESIGN.md section 7): each worker process starts one
    (``chatapp.embedded.start_bundled_emulator``); web processes only need to know the endpoint."""
    if provider_configured(config) or not as_bool(config.get("BUNDLED_EMULATOR")):
        return
    config["RUNPOD_ENDPOINT_ID"] = BUNDLED_ENDPOINT_ID
    config.setdefault("RUNPOD_GPU", "L4")
    if not config.get("RUNPOD_API_KEY"):
        config["RUNPOD_API_KEY"] = "bundled-emulator"
    if not config.get("RUNPOD_BASE_URL"):
        config["RUNPOD_BASE_URL"] = BUNDLED_PLACEHOLDER_URL


def split_list(value: Any) -> list[str]:
    """'a, b' or ['a', 'b'] -> ['a', 'b']."""
    if not value:
        return []
    if isinstance(value, str):
        value = value.split(",")
    return [v.strip() for v in value if v and v.strip()]
