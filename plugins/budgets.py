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

import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from flask import Blueprint, current_app, jsonify

from chatapp.api.errors import json_body
from chatapp.auth import require_admin
from chatapp.errors import BudgetExhausted, InvalidRequest, NotFound
from chatapp.hookspecs import REDELIVERY_GUARD_S, hookimpl
from chatapp.ids import utc_day
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

#: ARGV[1]: settlements as one JSON array, each [guard key, day key, month key, reservations key,
#: message id, cost in micros as a string]; ARGV[2]: how long a guard lives. Each releases the
#: reply's hold and adds its cost, at most once (the guard). A reply that cost nothing (a cache
#: hit, a failure before the provider ran, a free provider) only releases its hold, which is safe
#: to repeat: it sets no guard. One argument for a whole batch: redis-py packs arguments one by one.
SETTLE = """
for _, s in ipairs(cjson.decode(ARGV[1])) do
  local cost = tonumber(s[6])
  if cost <= 0 or redis.call('SET', s[1], '1', 'NX', 'EX', ARGV[2]) then
    local hold = s[5] .. '|'
    for _, member in ipairs(redis.call('ZRANGE', s[4], 0, -1)) do
      if string.sub(member, 1, #hold) == hold then redis.call('ZREM', s[4], member) end
    end
    if cost > 0 then
      redis.call('INCRBY', s[2], s[6])
      redis.call('EXPIRE', s[2], 3 * 86400)
      redis.call('INCRBY', s[3], s[6])
      redis.call('EXPIRE', s[3], 40 * 86400)
    end
  end
end
return 1
"""


def period_names(now: float) -> tuple[str, str]:
    """Today's and this month's names (UTC), e.g. 2026-12-07 and 2026-12."""
    day = utc_day(now)
    return day, day[:7]


def periods(now: float) -> tuple[str, str, datetime, datetime]:
    """Today's and this month's names, and when each resets (UTC)."""
    dt = datetime.fromtimestamp(now, tz=timezone.utc)
    day_reset = (dt + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    month_reset = (dt.replace(day=28) + timedelta(days=4)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (*period_names(now), day_reset, month_reset)


def micros(usd: Any) -> int:
    return -1 if usd in (None, "") else int(round(float(usd) * 1_000_000))


def limits_for(host: Host, user_id: str) -> tuple[int, int]:
    """(daily, monthly) limits in micro-dollars; -1 means none."""
    override = host.redis.hgetall(host.key("budget", "limits", user_id))
    daily = int(override["daily"]) if "daily" in override else micros(host.config.get("BUDGET_DAILY_USD"))
    monthly = int(override["monthly"]) if "monthly" in override else micros(host.config.get("BUDGET_MONTHLY_USD"))
    return daily, monthly


def keys(host: Host, user_id: str, now: float) -> tuple[str, str, str]:
    """The user's spent-today, spent-this-month and reservations keys."""
    day, month = period_names(now)
    return (host.key("budget", "spent", user_id, day), host.key("budget", "spent", user_id, month),
            host.key("budget", "reserved", user_id))


def settle(host: Host, settled: list[tuple[str, str, float, int]]) -> None:
    """Release the holds of finished (or refused) sends and add their costs, each at most once, in
    one script call: (user id, message id, when it ended, cost in micros) each."""
    batch = [[host.key("budget", "settled", mid), *keys(host, uid, at), mid, str(cost)]
             for uid, mid, at, cost in settled]
    if batch:
        host.redis.eval(SETTLE, 0, json.dumps(batch, separators=(",", ":")), REDELIVERY_GUARD_S)


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
    settle(host, [(request.user_id, request.message_id, time.time(), 0)])


@hookimpl
def after_generation_batch(replies: list[FinishedReply], host: Host) -> None:
    """Settle a batch of finished replies in one round trip: each releases its hold and adds its
    real cost (a cache hit costs nothing), at most once."""
    settle(host, [(reply.request.user_id, reply.result.message_id, reply.result.finished_at or time.time(),
                   reply.result.cost.micros if reply.result.cost and not reply.result.cached else 0)
                  for reply in replies])


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
