"""Users and API keys. Keys are random, shown once, and stored only as SHA-256 hashes."""
from __future__ import annotations

import functools
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, Callable

import redis
from flask import current_app, g, request

from chatapp.errors import Conflict, Forbidden, Unauthorized
from chatapp.ids import new_id, now_ms
from chatapp.redis_client import pairs

KEY_PREFIX = "ck_"


@dataclass
class User:
    id: str
    name: str
    is_admin: bool = False


def _user(h: dict[str, str]) -> User | None:
    return User(h["id"], h["name"], h.get("is_admin") == "1") if h else None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


#: a key's user record in one round trip (every API request authenticates)
_USER_FOR_KEY = """
local uid = redis.call('GET', KEYS[1])
if not uid then return {} end
return redis.call('HGETALL', ARGV[1] .. uid)
"""


class Users:
    """User records and key lookups for one Redis client."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.p = prefix
        self._user_for_key = client.register_script(_USER_FOR_KEY)

    def create(self, name: str, admin: bool = False) -> tuple[User, str]:
        """Create a user; returns it with its new API key (the only time the key exists in clear)."""
        uid = new_id("u")
        if not self.redis.hsetnx(f"{self.p}user_names", name, uid):
            raise Conflict(f"A user named {name!r} exists already.", code="user_exists")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(f"{self.p}user:{uid}", mapping={
                "id": uid, "name": name, "is_admin": "1" if admin else "0", "created_at": now_ms()})
            pipe.set(f"{self.p}apikey:{hash_key(key)}", uid)
            pipe.execute()
        return User(uid, name, admin), key

    def by_name(self, name: str) -> User | None:
        uid = self.redis.hget(f"{self.p}user_names", name)
        return self.get(uid) if uid else None

    def new_key(self, uid: str) -> str:
        """Issue another key for an existing user."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        self.redis.set(f"{self.p}apikey:{hash_key(key)}", uid)
        return key

    def get(self, uid: str) -> User | None:
        return _user(self.redis.hgetall(f"{self.p}user:{uid}"))

    def authenticate(self, key: str | None) -> User | None:
        if not key or len(key) > 200:
            return None
        flat = self._user_for_key(keys=[f"{self.p}apikey:{hash_key(key)}"], args=[f"{self.p}user:"])
        return _user(pairs(flat))


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def load_user() -> User:
    """The caller, from ``Authorization: Bearer``; raises 401 otherwise. Cached on ``g``."""
    user = g.get("user")
    if user is None:
        user = current_app.extensions["chatapp"].users.authenticate(bearer_token())
        if user is None:
            raise Unauthorized()
        g.user = user
    return user


def require_user(view: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for routes that need a valid API key."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        load_user()
        return view(*args, **kwargs)

    return wrapped


def require_admin(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not load_user().is_admin:
            raise Forbidden("This route is for admins.", code="admin_only")
        return view(*args, **kwargs)

    return wrapped


def authenticate() -> None:
    """``before_request`` hook for blueprints whose every route needs a key (returns nothing, so
    Flask goes on to the view); also counts the request against the user's rate limit."""
    from chatapp.limits import check_rate

    user = load_user()
    ext = current_app.extensions["chatapp"]
    check_rate(ext.redis, ext.prefix, user.id, "api", int(ext.config["RATE_LIMIT_REQUESTS_PER_MINUTE"]))


TICKET_TTL_S = 30


def issue_ticket(client: redis.Redis, prefix: str, user: User) -> str:
    """A one-time websocket ticket for ``user``: browsers cannot set headers on a websocket, and
    a key in a URL would end up in access logs; a ticket is short-lived and single-use."""
    ticket = "wst_" + secrets.token_urlsafe(24)
    client.set(f"{prefix}wsticket:{hash_key(ticket)}", user.id, ex=TICKET_TTL_S)
    return ticket


def redeem_ticket(client: redis.Redis, prefix: str, ticket: str | None) -> str | None:
    """The user id a ticket was issued to, once; None if unknown, used or expired."""
    if not ticket or len(ticket) > 200:
        return None
    return client.getdel(f"{prefix}wsticket:{hash_key(ticket)}")
