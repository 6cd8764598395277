"""Spending limits per user, per UTC day and month, that concurrent sends cannot overrun.

A send reserves an estimated cost (``before_generation``) in one Lua step that checks what was
spent plus what is already reserved against the limits; the reply's end settles it
(``after_generation_batch``: the reservation is released and the real cost added), whether it was
done, failed, stopped or cached; a send refused after its reservation releases it at once
(``generation_refused``). Reservations expire on their own if a reply never ends.
Limits: ``CHATAPP_BUDGET_DAILY_USD`` / ``CHATAPP_BUDGET_MONTHLY_USD`` for everyone, overridden
per user with ``PUT /api/v1/admin/budgets/<user_id>``.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from flask import Blueprint, current_app, jsonify

from chatapp.api.errors import json_body
from chatapp.auth import require_admin
from chatapp.errors import BudgetExhausted, InvalidRequest, NotFound
from chatapp.hookspecs import hookimpl
from chatapp.host import Host
from chatapp.models import ChatRequest, FinishedReply

RESERVE = """
local res, now = ARGV[3], tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', res, '-inf', now)
local reserved = 0
for _, member in ipairs(redis.call('ZRANGE', res, 0, -1)) do
  reserved = reserved + tonumber(string.match(member, '|(%d+)$'))
end
local amount = tonumber(ARGV[6])
local limits = {{ARGV[1], tonumber(ARGV[8]), 'day'}, {ARGV[2], tonumber(ARGV[9]), 'month'}}
for _, l in ipairs(limits) do
  if l[2] >= 0 then
    local spent = tonumber(redis.call('GET', l[1]) or '0')
    if spent + reserved + amount > l[2] then
      return {l[3], tostring(math.max(0, l[2] - spent - reserved))}
    end
  end
end
redis.call('ZADD', res, now + tonumber(ARGV[7]), ARGV[4] .. '|' .. ARGV[6])
return {'ok'}
"""

SETTLE = """
if not redis.call('SET', ARGV[1], '1', 'NX', 'EX', 2764800) then return 0 end
for _, member in ipairs(redis.call('ZRANGE', ARGV[4], 0, -1)) do
  if string.sub(member, 1, #ARGV[5] + 1) == ARGV[5] .. '|' then redis.call('ZREM', ARGV[4], member) end
end
local cost = tonumber(ARGV[6])
if cost > 0 then
  redis.call('INCRBY', ARGV[2], cost)
  redis.call('EXPIRE', ARGV[2], 3 * 86400)
  redis.call('INCRBY', ARGV[3], cost)
  redis.call('EXPIRE', ARGV[3], 40 * 86400)
end
return 1
"""


def periods(now: float) -> tuple[str, str, datetime, datetime]:
    """Today's and this month's names, and when each resets (UTC)."""
    dt = datetime.fromtimestamp(now, tz=timezone.utc)
    day_reset = (dt + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    month_reset = (dt.replace(day=28) + timedelta(days=4)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return dt.strftime("%Y-%m-%d"), dt.strftime("%Y-%m"), day_reset, month_reset


def micros(usd: Any) -> int:
    return -1 if usd in (None, "") else int(round(float(usd) * 1_000_000))


def limits_for(host: Host, user_id: str) -> tuple[int, int]:
    """(daily, monthly) limits in micro-dollars; -1 means none."""
    override = host.redis.hgetall(host.key("budget", "limits", user_id))
    daily = int(override["daily"]) if "daily" in override else micros(host.config.get("BUDGET_DAILY_USD"))
    monthly = int(override["monthly"]) if "monthly" in override else micros(host.config.get("BUDGET_MONTHLY_USD"))
    return daily, monthly


def keys(host: Host, user_id: str, now: float) -> tuple[str, str, str]:
    day, month, _, _ = periods(now)
    return (host.key("budget", "spent", user_id, day), host.key("budget", "spent", user_id, month),
            host.key("budget", "reserved", user_id))


@hookimpl
def before_generation(request: ChatRequest, host: Host) -> None:
    daily, monthly = limits_for(host, request.user_id)
    if daily < 0 and monthly < 0:
        return
    now = time.time()
    day_key, month_key, reserved = keys(host, request.user_id, now)
    amount = micros(host.config["BUDGET_RESERVE_USD"])
    ttl_ms = (int(host.config["JOB_TIMEOUT_S"]) + 300) * 1000
    out = host.redis.eval(RESERVE, 0, day_key, month_key, reserved, request.message_id, int(now * 1000), amount,
                          ttl_ms, daily, monthly)
    if out[0] != "ok":
        _, _, day_reset, month_reset = periods(now)
        resets = day_reset if out[0] == "day" else month_reset
        limit = daily if out[0] == "day" else monthly
        raise BudgetExhausted(
            f"Your {'daily' if out[0] == 'day' else 'monthly'} spending limit of ${limit / 1e6:,.6g} is reached; "
            f"it resets at {resets.isoformat().replace('+00:00', 'Z')}.",
            details={"period": out[0], "limit_usd": limit / 1e6, "remaining_usd": int(out[1]) / 1e6,
                     "resets_at": resets.isoformat().replace("+00:00", "Z")})


@hookimpl
def generation_refused(request: ChatRequest, reason: str, host: Host) -> None:
    """The send was refused after its hold was placed (a racing duplicate, the active-replies
    limit, a later plugin): release the hold now rather than when it expires."""
    day_key, month_key, reserved = keys(host, request.user_id, time.time())
    host.redis.eval(SETTLE, 0, host.key("budget", "settled", request.message_id), day_key, month_key, reserved,
                    request.message_id, 0)


@hookimpl
def after_generation_batch(replies: list[FinishedReply], host: Host) -> None:
    """Settle a batch of finished replies in one round trip: each releases its hold and adds its
    real cost (a cache hit costs nothing), at most once."""
    with host.redis.pipeline(transaction=False) as pipe:
        for reply in replies:
            result = reply.result
            day_key, month_key, reserved = keys(host, reply.request.user_id, result.finished_at or time.time())
            cost = result.cost.micros if result.cost and not result.cached else 0
            pipe.eval(SETTLE, 0, host.key("budget", "settled", result.message_id), day_key, month_key, reserved,
                      result.message_id, cost)
        pipe.execute()


def budget_status(host: Host, user_id: str) -> dict[str, Any]:
    now = time.time()
    day_key, month_key, _ = keys(host, user_id, now)
    daily, monthly = limits_for(host, user_id)
    spent_day, spent_month = (int(v or 0) for v in host.redis.mget(day_key, month_key))
    _, _, day_reset, month_reset = periods(now)
    return {"daily_limit_usd": None if daily < 0 else daily / 1e6, "spent_today_usd": spent_day / 1e6,
            "monthly_limit_usd": None if monthly < 0 else monthly / 1e6, "spent_this_month_usd": spent_month / 1e6,
            "day_resets_at": day_reset.isoformat().replace("+00:00", "Z"),
            "month_resets_at": month_reset.isoformat().replace("+00:00", "Z")}


bp = Blueprint("budgets", __name__)


@bp.put("/api/v1/admin/budgets/<user_id>")
@require_admin
def set_budget(user_id: str) -> Any:
    """Body: {"daily_usd": float|null, "monthly_usd": float|null}; null removes the override."""
    ext = current_app.extensions["chatapp"]
    if ext.users.get(user_id) is None:
        raise NotFound("No such user.", code="user_not_found")
    body = json_body()
    unknown = set(body) - {"daily_usd", "monthly_usd"}
    if unknown or not body:
        raise InvalidRequest("Send daily_usd and/or monthly_usd (numbers, or null to remove).",
                             code="validation_error", details={"unknown": sorted(unknown)})
    key = ext.host.key("budget", "limits", user_id)
    for field, name in (("daily_usd", "daily"), ("monthly_usd", "monthly")):
        if field in body:
            value = body[field]
            if value is None:
                ext.redis.hdel(key, name)
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                ext.redis.hset(key, name, micros(value))
            else:
                raise InvalidRequest(f"{field} must be a number >= 0 or null.", code="validation_error")
    return jsonify(budget_status(ext.host, user_id))


@hookimpl
def register_blueprints() -> list[Blueprint]:
    return [bp]
