"""The response cache: exact-match replies in Redis, with a TTL.

The key covers everything that changes the answer: the scope (the user by default; everyone
using the persona, or everyone, when the persona says so), provider, model, the persona's
version, the full rendered prompt including history, and the sampling parameters. A hit is
served without a job and costs nothing; it records the real cost of the generation it came from
as saved. Per request: ``cache`` = "use" (default), "refresh" (skip the lookup, store the
result) or "skip" (neither).
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import click
from flask import Blueprint, current_app, jsonify
from flask.cli import AppGroup

from chatapp.auth import require_admin
from chatapp.hookspecs import hookimpl
from chatapp.host import Host
from chatapp.models import CACHE_SCOPES, CachedReply, ChatRequest, GenerationResult, Usage

SAMPLING = ("temperature", "max_tokens", "top_p")


def cache_key(request: ChatRequest, host: Host) -> str:
    persona = request.persona
    scope = (persona.cache_scope if persona and persona.cache_scope else None) or host.config["CACHE_SCOPE"]
    if scope not in CACHE_SCOPES:
        scope = "user"
    owner = {"user": f"user:{request.user_id}", "persona": f"persona:{persona.name if persona else ''}",
             "global": "global"}[scope]
    material = {
        "scope": owner, "provider": request.provider, "model": request.model,
        "persona": persona.content_hash() if persona else "",
        "messages": [[m.role, m.content] for m in request.messages],
        "params": {k: request.params.get(k) for k in SAMPLING},
    }
    raw = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def _count(host: Host, user_id: str, **fields: int) -> None:
    with host.redis.pipeline(transaction=False) as pipe:
        for key in (host.key("cache", "stats"), host.key("cache", "stats", user_id)):
            for name, amount in fields.items():
                pipe.hincrby(key, name, amount)
        pipe.execute()


@hookimpl
def get_cached_reply(request: ChatRequest, host: Host) -> CachedReply | None:
    if not host.config.get("CACHE_ENABLED", True):
        return None
    raw = host.redis.get(host.key("cache", "entry", cache_key(request, host)))
    _count(host, request.user_id, **({"hits": 1} if raw else {"misses": 1}))
    if raw is None:
        return None
    entry = json.loads(raw)
    return CachedReply(text=entry["text"], usage=Usage.from_dict(entry.get("usage")),
                       finish_reason=entry.get("finish_reason") or "stop",
                       cost_saved_micros=int(entry.get("cost_micros", 0)))


@hookimpl
def after_generation(request: ChatRequest, result: GenerationResult, host: Host) -> None:
    if result.cached:
        _count(host, request.user_id, cost_saved_micros=int(result.meta.get("cost_saved_micros", 0)))
        return
    if (not host.config.get("CACHE_ENABLED", True) or request.cache == "skip" or result.state != "done"
            or not result.text):
        return
    key = cache_key(request, host)
    ttl = int(host.config["CACHE_TTL_S"])
    entry = json.dumps({"text": result.text, "usage": result.usage.to_dict(), "finish_reason": result.finish_reason,
                        "cost_micros": result.cost.micros if result.cost else 0, "stored_at": time.time(),
                        "message_id": result.message_id})
    with host.redis.pipeline(transaction=True) as pipe:
        pipe.set(host.key("cache", "entry", key), entry, ex=ttl)
        pipe.zadd(host.key("cache", "index"), {key: time.time() + ttl})
        pipe.hset(host.key("cache", "sizes"), key, len(entry))
        pipe.execute()
    _count(host, request.user_id, stores=1)


def cache_stats(host: Host, user_id: str | None = None) -> dict[str, Any]:
    """Hits, misses, hit rate and cost saved (for a user, or for everyone); entries and bytes."""
    stats = {k: int(v) for k, v in host.redis.hgetall(host.key("cache", "stats", *(user_id,) if user_id else ())).items()}
    hits, misses = stats.get("hits", 0), stats.get("misses", 0)
    out: dict[str, Any] = {
        "hits": hits, "misses": misses, "hit_rate": round(hits / (hits + misses), 4) if hits + misses else 0.0,
        "stores": stats.get("stores", 0), "cost_saved_usd": stats.get("cost_saved_micros", 0) / 1_000_000,
    }
    if user_id is None:
        out.update(_entries(host))
    return out


def _entries(host: Host) -> dict[str, int]:
    """Live entries and their bytes; expired ones are dropped from the index as we go."""
    index, sizes = host.key("cache", "index"), host.key("cache", "sizes")
    expired = host.redis.zrangebyscore(index, "-inf", time.time())
    if expired:
        with host.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(index, *expired)
            pipe.hdel(sizes, *expired)
            pipe.execute()
    live = host.redis.zcard(index)
    total = sum(int(v) for v in host.redis.hvals(sizes)) if live else 0
    return {"entries": live, "bytes": total}


def clear_cache(host: Host) -> int:
    index = host.key("cache", "index")
    keys = host.redis.zrange(index, 0, -1)
    with host.redis.pipeline(transaction=True) as pipe:
        for i in range(0, len(keys), 500):
            pipe.delete(*[host.key("cache", "entry", k) for k in keys[i:i + 500]])
        pipe.delete(index, host.key("cache", "sizes"))
        pipe.execute()
    return len(keys)


admin = Blueprint("cache_admin", __name__)


@admin.get("/api/v1/admin/cache")
@require_admin
def admin_stats() -> Any:
    return jsonify(cache_stats(current_app.extensions["chatapp"].host))


@admin.delete("/api/v1/admin/cache")
@require_admin
def admin_clear() -> Any:
    return jsonify({"deleted": clear_cache(current_app.extensions["chatapp"].host)})


@hookimpl
def register_blueprints() -> list[Blueprint]:
    return [admin]


cache_cli = AppGroup("cache", help="The response cache.")


@cache_cli.command("preload")
@click.argument("questions", type=click.File("r", encoding="utf-8"))
@click.option("--persona", required=True, help="The persona whose answers to cache (e.g. faq-bot).")
@click.option("--user", "user_name", default="cache-preloader", show_default=True,
              help="The user the questions are asked as (created if missing).")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for each answer.")
def preload(questions: Any, persona: str, user_name: str, timeout: float) -> None:
    """Ask every line of QUESTIONS (one question a line) so the answers are cached.

    Needs a running worker. Useful for personas whose cache scope is "persona" or "global"
    (an FAQ bot): with "user" scope only the preloading user would ever hit the entries.
    """
    ext = current_app.extensions["chatapp"]
    target = ext.catalog.persona(persona)
    scope = (target.cache_scope if target and target.cache_scope else None) or ext.config["CACHE_SCOPE"]
    if scope == "user":
        click.echo(f"warning: persona {persona!r} caches per user; other users will not hit these entries", err=True)
    if ext.live_workers() == 0:
        raise click.ClickException("No worker is running: start one (python -m workers) and try again.")
    user = ext.users.by_name(user_name) or ext.users.create(user_name)[0]
    done = cached = failed = 0
    for line in questions:
        question = line.strip()
        if not question:
            continue
        accepted = ext.chat.send(user, conversation_id=None, content=question, persona=persona)
        final = ext.relay.wait(accepted.message_id, timeout)
        if final is None or final["type"] != "done":
            failed += 1
            click.echo(f"failed: {question}", err=True)
        elif final.get("cached"):
            cached += 1
        else:
            done += 1
    click.echo(f"{done} answered and cached, {cached} already cached, {failed} failed")


@cache_cli.command("stats")
def stats_command() -> None:
    """Hits, misses, hit rate, cost saved, entries and bytes."""
    click.echo(json.dumps(cache_stats(current_app.extensions["chatapp"].host), indent=2))


@cache_cli.command("clear")
def clear_command() -> None:
    """Delete every cached reply."""
    click.echo(f"deleted {clear_cache(current_app.extensions['chatapp'].host)} entries")


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(cache_cli)
