"""The Lua scripts behind every reply write, loaded once per Redis client.

Each script is ``lua/_common.lua`` (event append and finalize) followed by its own body, so the
fenced-write rules live in one place.
"""
from __future__ import annotations

from importlib import resources
from typing import Any

import redis

SCRIPT_NAMES = (
    "send", "regenerate", "claim", "append", "save_state", "finish", "cancel", "renew", "reap", "delete_conversation",
    "history",
)


def _source(name: str, firehose_maxlen: int) -> str:
    folder = resources.files("chatapp") / "lua"
    common = (folder / "_common.lua").read_text().replace("%FIREHOSE_MAXLEN%", str(int(firehose_maxlen)))
    return common + "\n" + (folder / f"{name}.lua").read_text()


class Scripts:
    """Registered scripts as attributes: ``scripts.send(args=[...])``."""

    def __init__(self, client: redis.Redis, firehose_maxlen: int) -> None:
        for name in SCRIPT_NAMES:
            setattr(self, name, client.register_script(_source(name, firehose_maxlen)))

    def __getattr__(self, name: str) -> Any:  # for type checkers; real ones are set above
        raise AttributeError(name)
