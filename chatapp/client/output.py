"""Plain-text formatting for the terminal: errors, cost footers, lists of conversations, messages,
personas and usage. Pure functions returning strings, so they are easy to test and to reuse."""
from __future__ import annotations

from typing import Any, Iterable

from chatapp.client.api import ApiError


def format_error(exc: ApiError) -> str:
    """``error: <message> (<code>)``, plus when to retry for a 429."""
    line = f"error: {exc.message} ({exc.code})"
    if exc.retry_after and "retry" not in exc.message.lower():
        line += f"; retry after {exc.retry_after} s"
    return line


def money(usd: float | None) -> str:
    """Dollars with enough decimals for per-request costs of a fraction of a cent."""
    usd = float(usd or 0.0)
    return f"${usd:,.2f}" if usd >= 100 else f"${usd:.6f}"


def tokens(usage: dict[str, Any] | None) -> str:
    """``59 in / 5 out`` (``-`` when the server reported none)."""
    usage = usage or {}
    if "input_tokens" not in usage and "output_tokens" not in usage:
        return "-"
    return f"{usage.get('input_tokens', 0)} in / {usage.get('output_tokens', 0)} out"


def footer(cost_usd: float, cached: bool, usage: dict[str, Any] | None) -> str:
    """The one-line summary printed after a reply."""
    return f"[cost {money(cost_usd)} | cached {'yes' if cached else 'no'} | tokens {tokens(usage)}]"


def short_time(iso: str | None) -> str:
    """``2026-11-23T14:24:45.597Z`` → ``2026-11-23 14:24``."""
    return (iso or "")[:16].replace("T", " ")


def one_line(text: str, width: int) -> str:
    """First line of ``text`` cut to ``width`` characters."""
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def conversation_lines(items: Iterable[dict[str, Any]], current: str | None = None) -> list[str]:
    """One line per conversation: marker, id, last activity, message count, persona, title."""
    lines = []
    for conv in items:
        mark = "*" if conv.get("id") == current else " "
        title = one_line(conv.get("title") or "", 50) or "(untitled)"
        lines.append(f"{mark} {conv.get('id')}  {short_time(conv.get('updated_at'))}  "
                     f"{conv.get('message_count', 0):>3} msgs  {conv.get('persona') or '-':<14} {title}")
    return lines or ["(no conversations yet)"]


def message_lines(messages: Iterable[dict[str, Any]]) -> list[str]:
    """Messages as ``you>`` / ``<persona>`` blocks, with a reply's state when it is not done."""
    lines = []
    for msg in messages:
        who = "you" if msg.get("role") == "user" else "bot"
        state = msg.get("state")
        suffix = f"  [{state}]" if msg.get("role") != "user" and state != "done" else ""
        lines.append(f"{who}> {msg.get('content', '')}{suffix}")
    return lines


def persona_lines(data: dict[str, Any], selected: str | None = None) -> list[str]:
    """Personas with their descriptions; the server's default and the chosen one are marked."""
    default = data.get("default")
    lines = []
    for p in data.get("items", []):
        name = p.get("name", "")
        tags = [t for t, on in (("default", name == default), ("selected", name == selected)) if on]
        tag = f" ({', '.join(tags)})" if tags else ""
        lines.append(f"  {name}{tag}: {one_line(p.get('description') or p.get('display_name') or '', 70)}")
    return lines or ["(no personas)"]


def usage_lines(report: dict[str, Any]) -> list[str]:
    """The caller's usage: totals, averages, projections, cache and budget when present."""
    totals, avg = report.get("totals", {}), report.get("averages", {})
    proj, period = report.get("projections", {}), report.get("period", {})
    lines = [
        f"Usage {period.get('from', '?')} .. {period.get('to', '?')} ({period.get('days', '?')} days)",
        f"  replies      {totals.get('replies', 0)} ({totals.get('done', 0)} done, {totals.get('failed', 0)} failed, "
        f"{totals.get('cancelled', 0)} cancelled, {totals.get('cached', 0)} cached)",
        f"  cost         {money(totals.get('cost_usd'))} (saved by cache {money(totals.get('cost_saved_usd'))})",
        f"  tokens       {totals.get('input_tokens', 0)} in / {totals.get('output_tokens', 0)} out",
        f"  per reply    {money(avg.get('cost_per_reply_usd'))}",
        f"  projected    {money(proj.get('per_1000_requests_usd'))} per 1,000 requests, "
        f"{money(proj.get('per_month_usd'))} per month",
    ]
    cache = report.get("cache")
    if cache:
        lines.append(f"  cache        {cache.get('hits', 0)} hits, {cache.get('misses', 0)} misses "
                     f"(hit rate {float(cache.get('hit_rate') or 0) * 100:.1f}%)")
    budget = report.get("budget")
    if budget:
        def limit(v: Any) -> str:
            return "no limit" if v is None else money(v)
        lines.append(f"  budget       today {money(budget.get('spent_today_usd'))} of "
                     f"{limit(budget.get('daily_limit_usd'))}, this month "
                     f"{money(budget.get('spent_this_month_usd'))} of {limit(budget.get('monthly_limit_usd'))}")
    return lines
