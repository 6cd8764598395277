"""Usage and cost analytics: per-day aggregates per user, persona, model and overall, a per-reply
log for CSV export, and ``GET /api/v1/usage`` (plus admin views).

Recorded from ``after_generation_batch`` (one script call for a batch of finished replies), which
the outbox may deliver twice if a worker dies mid-hook: the script checks each reply's guard
before it applies that reply's increments, so each reply is counted exactly once.
"""
from __future__ import annotations

import csv
import io
import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from chatapp.auth import load_user, require_admin
from chatapp.errors import InvalidRequest
from chatapp.hookspecs import REDELIVERY_GUARD_S, hookimpl
from chatapp.ids import utc_day
from chatapp.host import Host
from chatapp.models import ChatRequest, Feedback, FinishedReply, GenerationResult
from plugins.budgets import budget_status
from plugins.cache import cache_stats

#: ARGV: the log stream, the guard keys' TTL, and the batch as one JSON array (redis-py packs every
#: argument in Python, so a batch is one argument, not a dozen per reply): per reply its guard key,
#: its increments and log entry (flat name, value arrays; values as strings) and the hashes to
#: increment. The increments of the replies counted now are summed per hash and field first: a
#: batch's replies mostly share their day, model and persona, so a batch of 50 costs a few dozen
#: HINCRBYs, not 50 times as many. (Sums are integers below 2^53, which Lua's numbers hold exactly;
#: '%d' keeps them from printing as 1e+14.) Returns the replies counted.
RECORD_ONCE = """
local counted, sums, order = 0, {}, {}
for _, r in ipairs(cjson.decode(ARGV[3])) do
  if redis.call('SET', r[1], '1', 'NX', 'EX', ARGV[2]) then
    local inc = r[2]
    for _, key in ipairs(r[4]) do
      local fields = sums[key]
      if not fields then
        fields = {}
        sums[key] = fields
        order[#order + 1] = key
      end
      for j = 1, #inc, 2 do
        fields[inc[j]] = (fields[inc[j]] or 0) + tonumber(inc[j + 1])
      end
    end
    redis.call('XADD', ARGV[1], 'MAXLEN', '~', 1000000, '*', unpack(r[3]))
    counted = counted + 1
  end
end
for _, key in ipairs(order) do
  for field, amount in pairs(sums[key]) do
    redis.call('HINCRBY', key, field, string.format('%d', amount))
  end
end
return counted
"""
COUNTERS = ("replies", "done", "failed", "cancelled", "cached", "cost_micros", "cost_saved_micros", "input_tokens",
            "output_tokens", "ttft_ms_sum", "ttft_n", "total_ms_sum", "total_n", "reply_chars", "prompt_chars",
            "feedback_up", "feedback_down")
LOG_FIELDS = ("time", "message_id", "conversation_id", "user_id", "persona", "provider", "model", "state", "cached",
              "cost_micros", "cost_saved_micros", "input_tokens", "output_tokens", "ttft_ms", "total_ms",
              "reply_chars", "prompt_chars", "finish_reason")
MAX_DAYS = 366


def increments(request: ChatRequest, result: GenerationResult) -> dict[str, int]:
    out = {"replies": 1, result.state: 1, "cached": int(result.cached),
           "cost_micros": result.cost.micros if result.cost else 0,
           "cost_saved_micros": int(result.meta.get("cost_saved_micros", 0)) if result.cached else 0,
           "input_tokens": result.usage.input_tokens, "output_tokens": result.usage.output_tokens,
           "reply_chars": len(result.text), "prompt_chars": len(request.prompt_text)}
    if result.first_token_at and result.started_at and not result.cached:
        out.update(ttft_ms_sum=int((result.first_token_at - result.started_at) * 1000), ttft_n=1)
    if result.finished_at and result.started_at and not result.cached:
        out.update(total_ms_sum=int((result.finished_at - result.started_at) * 1000), total_n=1)
    return out


def reply_record(request: ChatRequest, result: GenerationResult, host: Host) -> list[Any]:
    """One finished reply as RECORD_ONCE takes it: guard key, increments, log entry, hashes."""
    day = utc_day(result.finished_at or time.time())
    persona = request.persona.name if request.persona else ""
    keys = [host.key("usage", "user", request.user_id, day), host.key("usage", "all", day),
            host.key("usage", "persona", persona, day), host.key("usage", "model", f"{result.provider}/{result.model}", day)]
    inc = increments(request, result)
    log = {"time": f"{result.finished_at or time.time():.3f}", "message_id": result.message_id,
           "conversation_id": request.conversation_id, "user_id": request.user_id, "persona": persona,
           "provider": result.provider, "model": result.model, "state": result.state, "cached": int(result.cached),
           "ttft_ms": inc.get("ttft_ms_sum", ""), "total_ms": inc.get("total_ms_sum", ""),
           "finish_reason": result.finish_reason or "", **{k: inc[k] for k in ("cost_micros", "cost_saved_micros",
           "input_tokens", "output_tokens", "reply_chars", "prompt_chars")}}
    # most counters are 0 for a given reply; skip the no-op writes
    counts = [str(x) for name, amount in inc.items() if amount for x in (name, amount)]
    fields = [str(x) for name in LOG_FIELDS for x in (name, log[name])]
    return [host.key("usage", "seen", result.message_id), counts, fields, keys]


@hookimpl
def after_generation_batch(replies: list[FinishedReply], host: Host) -> None:
    """Count a batch of finished replies in one script call (each at most once, by its guard)."""
    if not replies:
        return
    batch = [reply_record(reply.request, reply.result, host) for reply in replies]
    host.redis.eval(RECORD_ONCE, 0, host.key("usage", "log"), REDELIVERY_GUARD_S,
                    json.dumps(batch, separators=(",", ":")))


@hookimpl
def after_feedback(feedback: Feedback, host: Host) -> None:
    """Count ratings per day (of the rating) like replies; a changed rating moves, not doubles."""
    if feedback.previous_rating == feedback.rating:
        return
    day = utc_day(feedback.at or time.time())
    keys = [host.key("usage", "user", feedback.user_id, day), host.key("usage", "all", day),
            host.key("usage", "persona", feedback.persona, day),
            host.key("usage", "model", f"{feedback.provider}/{feedback.model}", day)]
    with host.redis.pipeline(transaction=True) as pipe:
        for key in keys:
            pipe.hincrby(key, f"feedback_{feedback.rating}", 1)
            if feedback.previous_rating:
                pipe.hincrby(key, f"feedback_{feedback.previous_rating}", -1)
        pipe.execute()


def summarize(rows: list[dict[str, int]]) -> dict[str, Any]:
    total = {name: sum(r.get(name, 0) for r in rows) for name in COUNTERS}
    replies = total["replies"]
    paid = replies - total["cached"]
    return {
        "totals": {"replies": replies, "done": total["done"], "failed": total["failed"],
                   "cancelled": total["cancelled"], "cached": total["cached"],
                   "cost_usd": total["cost_micros"] / 1e6, "cost_saved_usd": total["cost_saved_micros"] / 1e6,
                   "input_tokens": total["input_tokens"], "output_tokens": total["output_tokens"],
                   "feedback_up": total["feedback_up"], "feedback_down": total["feedback_down"]},
        "averages": {
            "cost_per_reply_usd": round(total["cost_micros"] / 1e6 / replies, 8) if replies else 0.0,
            "cost_per_generated_reply_usd": round(total["cost_micros"] / 1e6 / paid, 8) if paid else 0.0,
            "time_to_first_token_s": round(total["ttft_ms_sum"] / total["ttft_n"] / 1000, 3) if total["ttft_n"] else None,
            "total_time_s": round(total["total_ms_sum"] / total["total_n"] / 1000, 3) if total["total_n"] else None,
            "reply_chars": round(total["reply_chars"] / replies, 1) if replies else 0.0,
            "prompt_chars": round(total["prompt_chars"] / replies, 1) if replies else 0.0,
        },
    }


def read_days(host: Host, scope: list[str], days: int) -> list[tuple[str, dict[str, int]]]:
    today = datetime.now(timezone.utc).date()
    names = [(today - timedelta(days=i)).isoformat() for i in range(days - 1, -1, -1)]
    with host.redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(host.key("usage", *scope, name))
        rows = pipe.execute()
    return [(name, {k: int(v) for k, v in row.items()}) for name, row in zip(names, rows)]


def usage_report(host: Host, scope: list[str], days: int) -> dict[str, Any]:
    daily = read_days(host, scope, days)
    report = summarize([row for _, row in daily])
    totals = report["totals"]
    last_week = summarize([row for _, row in daily[-7:]])["totals"]
    report["projections"] = {
        "per_1000_requests_usd": round(report["averages"]["cost_per_reply_usd"] * 1000, 6),
        "per_month_usd": round(last_week["cost_usd"] / min(7, days) * 30, 6),
    }
    report["period"] = {"days": days, "from": daily[0][0], "to": daily[-1][0]}
    report["daily"] = [{"date": name, "replies": row.get("replies", 0), "cost_usd": row.get("cost_micros", 0) / 1e6,
                        "cached": row.get("cached", 0), "cost_saved_usd": row.get("cost_saved_micros", 0) / 1e6,
                        "output_tokens": row.get("output_tokens", 0)} for name, row in daily]
    del totals  # report["totals"] already holds them
    return report


def days_arg() -> int:
    raw = request.args.get("days", "30")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_DAYS:
        raise InvalidRequest(f"days must be a whole number from 1 to {MAX_DAYS}.", code="invalid_days")
    return int(raw)


def as_csv(rows: list[dict[str, Any]], filename: str) -> Response:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return Response(out.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


bp = Blueprint("usage", __name__)


@bp.get("/api/v1/usage")
def my_usage() -> Any:
    user = load_user()
    host = current_app.extensions["chatapp"].host
    report = usage_report(host, ["user", user.id], days_arg())
    if request.args.get("format") == "csv":
        return as_csv(report["daily"], "usage.csv")
    report["cache"] = cache_stats(host, user.id)
    if current_app.extensions["chatapp"].pm.has_plugin("plugins.budgets"):
        report["budget"] = budget_status(host, user.id)
    return jsonify(report)


@bp.get("/api/v1/admin/usage")
@require_admin
def all_usage() -> Any:
    ext = current_app.extensions["chatapp"]
    host, days = ext.host, days_arg()
    report = usage_report(host, ["all"], days)
    report["cache"] = cache_stats(host)
    report["by_persona"] = {name: summarize([row for _, row in read_days(host, ["persona", name], days)])["totals"]
                            for name in sorted(ext.catalog.personas)}
    report["by_model"] = {f"{p.id}/{m.id}": summarize([row for _, row in read_days(host, ["model", f"{p.id}/{m.id}"],
                                                                                      days)])["totals"]
                          for p in ext.catalog.providers.values() for m in p.models}
    return jsonify(report)


@bp.get("/api/v1/admin/usage/messages.csv")
@require_admin
def message_log() -> Any:
    """Per-reply metadata (lengths, times, cost, cached) of the last ``days`` days, oldest first."""
    host = current_app.extensions["chatapp"].host
    since_ms = int((time.time() - days_arg() * 86400) * 1000)
    entries = host.redis.xrange(host.key("usage", "log"), min=f"{since_ms}-0", max="+", count=100_000)
    # ratings arrive after the log entry was written: read them from the replies now
    with host.redis.pipeline(transaction=False) as pipe:
        for _, fields in entries:
            pipe.hget(host.key("msg", fields.get("message_id", "")), "feedback")
        ratings = [json.loads(raw).get("rating", "") if raw else "" for raw in pipe.execute()]
    return as_csv([{**{name: fields.get(name, "") for name in LOG_FIELDS}, "feedback": rating}
                   for (_, fields), rating in zip(entries, ratings)], "messages.csv")


@hookimpl
def register_blueprints() -> list[Blueprint]:
    return [bp]
