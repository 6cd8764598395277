"""Retention: delete conversations idle longer than ``CHATAPP_RETENTION_DAYS`` (default: keep all).

A conversation's last activity is its score in ``user:<uid>:convs`` (and, for batch
conversations, ``user:<uid>:batchconvs``). The sweeper walks the users (``HSCAN`` of
``user_names``) and, for each, those indexes by score in bounded batches, deleting through
``Store.delete_conversation`` (``delete_conversation.lua``: messages, partials, streams,
idempotency keys, leases, indexes): there is no second deletion path.

Every worker process runs a ``RetentionSweeper`` thread (``workers/services.py``); a short Redis
lock, renewed per batch, keeps to one sweep at a time across processes, and ``retention:last``
keeps to one sweep per ``CHATAPP_RETENTION_SWEEP_S`` however many workers there are.
``flask --app wsgi retention sweep`` runs one now.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import TYPE_CHECKING

import redis

from chatapp.errors import NotFound

if TYPE_CHECKING:  # pragma: no cover
    from chatapp.extension import ChatApp

log = logging.getLogger(__name__)

LOCK_TTL_MS = 30_000  # renewed after every batch; a dead sweeper's lock lapses within this
BATCH = 100
INDEXES = ("convs", "batchconvs")
DAY_MS = 24 * 3600 * 1000

# compare-and-set on the lock's token, so a sweeper never renews or frees another's lock
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class LockLost(Exception):
    """Another sweeper holds the lock now (ours lapsed): stop sweeping."""


class RetentionSweeper:
    """Deletes conversations whose last activity is older than ``days``."""

    def __init__(self, ext: "ChatApp", days: float | None = None, interval_s: float | None = None,
                 batch: int = BATCH) -> None:
        self.ext, self.redis, self.p = ext, ext.redis, ext.prefix
        days = days if days is not None else ext.config.get("RETENTION_DAYS")
        self.days = float(days) if days else None
        self.interval_s = float(interval_s if interval_s is not None else ext.config.get("RETENTION_SWEEP_S") or 3600)
        self.batch = batch
        self.lock_key, self.last_key = self.p + "retention:lock", self.p + "retention:last"
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)
        self._thread: threading.Thread | None = None
        self.stopping = threading.Event()

    @property
    def enabled(self) -> bool:
        return bool(self.days and self.days > 0)

    # -- one sweep ------------------------------------------------------------------------------
    def sweep(self, only_if_due: bool = False) -> int | None:
        """Delete every conversation idle longer than ``days``; returns how many, or None when
        another process is sweeping (or, with ``only_if_due``, one swept less than an interval ago)."""
        if not self.enabled:
            return 0
        token = secrets.token_hex(8)
        if not self.redis.set(self.lock_key, token, nx=True, px=LOCK_TTL_MS):
            return None
        try:
            last = self.redis.get(self.last_key)
            if only_if_due and last and time.time() * 1000 - int(last) < self.interval_s * 1000:
                return None
            cutoff = int(time.time() * 1000 - self.days * DAY_MS)  # type: ignore[operator]
            deleted = self._sweep_users(cutoff, token)
            self.redis.set(self.last_key, int(time.time() * 1000))
            if deleted:
                log.info("retention: deleted %d conversations idle for more than %s days", deleted, self.days)
            return deleted
        except LockLost:
            log.warning("retention: the sweep lock lapsed; another process continues")
            return None
        finally:
            self._release(keys=[self.lock_key], args=[token])

    def _sweep_users(self, cutoff: int, token: str) -> int:
        deleted, cursor = 0, 0
        while True:
            cursor, users = self.redis.hscan(self.p + "user_names", cursor, count=self.batch)
            for uid in users.values():
                for index in INDEXES:
                    deleted += self._sweep_index(uid, f"{self.p}user:{uid}:{index}", cutoff, token)
            if not cursor or self.stopping.is_set():
                return deleted

    def _sweep_index(self, uid: str, key: str, cutoff: int, token: str) -> int:
        deleted = 0
        while not self.stopping.is_set():
            cids = self.redis.zrangebyscore(key, "-inf", cutoff, start=0, num=self.batch)
            if not cids:
                break
            for cid in cids:
                score = self.redis.zscore(key, cid)  # re-read: a send may have just revived it
                if score is not None and score > cutoff:
                    continue
                try:
                    self.ext.store.delete_conversation(uid, cid)
                    deleted += 1
                    if not key.endswith(":convs"):  # the script clears the main index, not this one
                        self.redis.zrem(key, cid)
                except NotFound:
                    # the conversation is gone already: only its index entry is left
                    self.redis.zrem(key, cid)
            if not self._renew(keys=[self.lock_key], args=[token, LOCK_TTL_MS]):
                raise LockLost()
            if len(cids) < self.batch:
                break
        return deleted

    # -- the worker thread ----------------------------------------------------------------------
    def start(self) -> "RetentionSweeper":
        """Sweep in a daemon thread, when retention is configured (else do nothing)."""
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="chatapp-retention", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        # wake several times per interval; the shared "last" time keeps it to one sweep per interval
        tick = max(0.1, min(self.interval_s / 4, 300.0))
        while not self.stopping.wait(tick):
            try:
                self.sweep(only_if_due=True)
            except redis.RedisError as exc:
                log.warning("retention: Redis unavailable (%s)", type(exc).__name__)
            except Exception:
                log.exception("retention sweep failed; continuing")

    def stop(self) -> None:
        """Stop the thread (a sweep in progress stops after its current batch)."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
