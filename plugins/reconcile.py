"""Cost reconciliation: compare what we recorded with what the provider billed, per reply.

RunPod bills a worker per second, rounded up, from boot to stop: cold start, every job it ran,
the idle time between and after them. A reply's recorded cost covers only its own execution
seconds, so the bill is higher. Reconciling reads the provider's ledger (the bundled emulator's
``GET /v2/<endpoint>/billing``; RunPod itself shows billing only per account, in its console),
gives each reply the seconds it caused (the first job on a worker its cold start, each job the
idle time until the next one or until the worker stopped, the last job the rounding), splits
each worker's charge exactly by those seconds, and reports the difference. ``apply`` rewrites
the replies' recorded costs (and their conversations' and the usage totals) to the billed
amounts, so the two agree to the micro-dollar.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import click
import requests
from flask import Blueprint, current_app, jsonify, request
from flask.cli import AppGroup

from chatapp.auth import require_admin
from chatapp.errors import ProviderError
from chatapp.hookspecs import hookimpl
from chatapp.ids import utc_day
from chatapp.host import Host
from chatapp.models import ChatRequest, GenerationResult

log = logging.getLogger(__name__)


@hookimpl
def after_generation(request: ChatRequest, result: GenerationResult, host: Host) -> None:
    """Remember which reply each RunPod job served (the ledger speaks of jobs)."""
    job_id = result.meta.get("runpod_job_id")
    if job_id:
        host.redis.hset(host.key("costs", "jobs"), job_id, result.message_id)


def split_exactly(total: int, weights: list[float]) -> list[int]:
    """Integer shares of ``total`` proportional to ``weights`` that add up to ``total``."""
    weight_sum = sum(weights)
    if not weights:
        return []
    if weight_sum <= 0:
        weights, weight_sum = [1.0] * len(weights), float(len(weights))
    raw = [total * w / weight_sum for w in weights]
    shares = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - shares[i], reverse=True)[: total - sum(shares)]:
        shares[i] += 1
    return shares


def attribute(bill: dict[str, Any]) -> dict[str, int]:
    """Micro-dollars per job id: each finished worker session's charge split by caused seconds."""
    jobs = {j["job_id"]: j for j in bill.get("jobs", [])}
    out: dict[str, int] = {}
    for worker in bill.get("workers", []):
        ids = [j for j in worker["job_ids"] if j in jobs]
        if not ids:
            continue
        rows = sorted((jobs[j] for j in ids), key=lambda j: j["started_s"])
        caused = []
        for i, job in enumerate(rows):
            seconds = job["executionTime"] / 1000
            if i == 0:
                seconds += worker["cold_start_s"]
            until = rows[i + 1]["started_s"] if i + 1 < len(rows) else worker["billed_seconds"]
            seconds += max(0.0, until - job["ended_s"])  # idle it kept the worker for (last: + rounding)
            caused.append(seconds)
        for job, share in zip(rows, split_exactly(int(worker["micro_usd"]), caused)):
            out[job["job_id"]] = out.get(job["job_id"], 0) + share
    return out


def fetch_bills(ext: Any) -> list[dict[str, Any]]:
    provider = ext.catalog.providers.get("runpod")
    if provider is None:
        raise ProviderError("No RunPod provider is configured, so there is no bill to reconcile with.",
                            code="no_billing_source", status=409)
    bills = []
    for endpoint in provider.endpoints:
        url = f"{provider.client.base_url}/{endpoint.endpoint_id}/billing"
        try:
            r = requests.get(url, params={"settle": "true"}, timeout=10,
                             headers={"Authorization": f"Bearer {provider.client.api_key}"})
        except requests.RequestException as exc:
            raise ProviderError(f"Could not read the bill of endpoint {endpoint.endpoint_id}.") from exc
        if r.status_code == 404:
            raise ProviderError("This endpoint has no billing ledger: only the bundled RunPod emulator serves "
                                "one; RunPod shows billing per account in its console.",
                                code="no_billing_source", status=409)
        if r.status_code != 200:
            raise ProviderError(f"Reading the bill of {endpoint.endpoint_id} failed (HTTP {r.status_code}).")
        bills.append(r.json())
    return bills


def reconcile(ext: Any, apply: bool = False) -> dict[str, Any]:
    host = ext.host
    index = host.redis.hgetall(host.key("costs", "jobs"))
    billed: dict[str, int] = {}
    unmatched: list[str] = []
    complete = True
    provider_total = 0
    for bill in fetch_bills(ext):
        complete = complete and bool(bill.get("complete"))
        provider_total += int(bill.get("total_micro_usd", 0))
        for job_id, micros in attribute(bill).items():
            mid = index.get(job_id)
            if mid is None:
                unmatched.append(job_id)
            else:
                billed[mid] = billed.get(mid, 0) + micros
    rows = []
    for mid, amount in sorted(billed.items()):
        h = host.redis.hgetall(host.key("msg", mid))
        if not h:
            continue
        recorded = int(h.get("cost_micros") or 0)
        rows.append({"message_id": mid, "conversation_id": h["conversation_id"], "recorded_micros": recorded,
                     "billed_micros": amount, "difference_micros": amount - recorded})
        if apply and amount != recorded:
            _adjust(host, h, amount - recorded)
    recorded_total = sum(r["recorded_micros"] for r in rows)
    return {
        "provider_total_usd": provider_total / 1e6, "provider_total_micros": provider_total,
        "recorded_total_micros": recorded_total, "matched_billed_micros": sum(r["billed_micros"] for r in rows),
        "difference_micros": sum(r["billed_micros"] for r in rows) - recorded_total,
        "complete": complete, "applied": apply, "unmatched_jobs": unmatched, "replies": rows,
    }


def _adjust(host: Host, h: dict[str, str], diff: int) -> None:
    """Move a reply's recorded cost to what was billed, with everything that totals it."""
    day = utc_day(int(h.get("finished_at") or 0) / 1000)
    meta = json.loads(h.get("meta") or "{}")
    meta["billing_adjustment_micros"] = meta.get("billing_adjustment_micros", 0) + diff
    with host.redis.pipeline(transaction=True) as pipe:
        pipe.hincrby(host.key("msg", h["id"]), "cost_micros", diff)
        pipe.hset(host.key("msg", h["id"]), "meta", json.dumps(meta))
        pipe.hincrby(host.key("conv", h["conversation_id"]), "cost_micros", diff)
        pipe.hincrby(host.key("user", h["user_id"], "usage"), "cost_micros", diff)
        for scope in (["usage", "user", h["user_id"], day], ["usage", "all", day],
                      ["usage", "persona", h.get("persona", ""), day],
                      ["usage", "model", f"{h.get('provider', '')}/{h.get('model', '')}", day]):
            pipe.hincrby(host.key(*scope), "cost_micros", diff)
        pipe.execute()


costs_cli = AppGroup("costs", help="Cost records.")


@costs_cli.command("reconcile")
@click.option("--apply", is_flag=True, help="Set each reply's recorded cost to what was billed.")
def reconcile_command(apply: bool) -> None:
    """Compare recorded costs with the provider's bill (the bundled emulator's ledger)."""
    report = reconcile(current_app.extensions["chatapp"], apply=apply)
    click.echo(f"provider billed {report['provider_total_micros']} micro-USD; replies matched to it were "
               f"recorded at {report['recorded_total_micros']} and billed {report['matched_billed_micros']}: "
               f"difference {report['difference_micros']}{' (applied)' if apply else ''}; "
               f"{len(report['unmatched_jobs'])} jobs not ours; bill {'complete' if report['complete'] else 'still open'}")


bp = Blueprint("reconcile", __name__)


@bp.get("/api/v1/admin/costs/reconcile")
@require_admin
def reconcile_report() -> Any:
    return jsonify(reconcile(current_app.extensions["chatapp"]))


@bp.post("/api/v1/admin/costs/reconcile")
@require_admin
def reconcile_apply() -> Any:
    return jsonify(reconcile(current_app.extensions["chatapp"], apply=request.args.get("apply") == "true"))


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(costs_cli)


@hookimpl
def register_blueprints() -> list[Blueprint]:
    return [bp]
