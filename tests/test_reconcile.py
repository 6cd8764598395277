"""Reconciliation with the emulator's bill: idle and cold-start seconds attributed, exact after apply."""
from __future__ import annotations

import time

import pytest

from chatapp.runpod_emulator import EmulatorConfig, EmulatorServer
from plugins.reconcile import attribute, split_exactly
from tests.conftest import InThreadWorker, auth, close_app, make_app

EP = "ep-bill"


def test_split_exactly_adds_up():
    assert split_exactly(1330, [1.0, 1.0, 1.0]) == [444, 443, 443]
    assert sum(split_exactly(7, [0.5, 1.2, 5.0])) == 7
    assert split_exactly(5, [0, 0]) == [3, 2]


def test_attribution_gives_cold_start_idle_and_rounding_to_the_jobs_that_caused_them():
    bill = {"workers": [{"job_ids": ["a", "b"], "cold_start_s": 1.0, "billed_seconds": 10, "micro_usd": 1000}],
            "jobs": [{"job_id": "a", "executionTime": 2000, "started_s": 1.0, "ended_s": 3.0},
                     {"job_id": "b", "executionTime": 1000, "started_s": 5.0, "ended_s": 6.0}]}
    # a: 1 cold + 2 run + 2 idle until b = 5 s; b: 1 run + 4 idle/rounding until the worker's 10th second = 5 s
    assert attribute(bill) == {"a": 500, "b": 500}


@pytest.fixture()
def billed_stack(app_config):
    cfg = EmulatorConfig(cold_start_s=0.4, idle_timeout_s=0.5, ttft_s=0.05, tokens_per_s=100,
                         min_execution_timeout_ms=0, min_ttl_ms=0, max_workers=1, price_per_s=0.00076)
    emulator = EmulatorServer(cfg, host="127.0.0.1", port=0, api_key="k")
    emulator.start()
    app = make_app({**app_config, "DEFAULT_PROVIDER": "runpod", "RUNPOD_API_KEY": "k", "RUNPOD_ENDPOINT_ID": EP,
                    "RUNPOD_BASE_URL": emulator.base_url, "RUNPOD_GPU": "A100", "CACHE_ENABLED": False})
    ext = app.extensions["chatapp"]
    worker = InThreadWorker(ext)
    yield app, ext, emulator
    worker.stop()
    close_app(app)
    emulator.stop()


def test_recorded_costs_agree_with_the_bill_after_apply(billed_stack):
    app, ext, emulator = billed_stack
    c = app.test_client()
    _, key = ext.users.create("payer")
    _, admin = ext.users.create("accountant", admin=True)
    replies = []
    for i in range(3):
        r = c.post("/api/v1/chat", json={"message": f"bill me {i}", "max_tokens": 20}, headers=auth(key))
        assert r.status_code == 200, r.json
        replies.append(r.json)
        time.sleep(0.2 if i == 0 else 0.7)  # the second gap outlasts the idle timeout: a new cold start
    time.sleep(1.0)  # let the outbox index the jobs
    before = c.get("/api/v1/admin/costs/reconcile", headers=auth(admin)).json
    bill = emulator.emulator.billing(EP, settle=True)
    assert before["provider_total_micros"] == bill["total_micro_usd"] > 0
    assert before["recorded_total_micros"] < before["provider_total_micros"]  # cold starts and idle were not recorded
    assert before["difference_micros"] == before["provider_total_micros"] - before["recorded_total_micros"]
    assert len(before["replies"]) == 3 and not before["unmatched_jobs"]
    result = app.test_cli_runner().invoke(args=["costs", "reconcile", "--apply"])
    assert result.exit_code == 0 and "(applied)" in result.output
    after = c.get("/api/v1/admin/costs/reconcile", headers=auth(admin)).json
    assert after["difference_micros"] == 0 and after["recorded_total_micros"] == bill["total_micro_usd"]
    convs = sum(c.get(f"/api/v1/conversations/{r['conversation_id']}", headers=auth(key)).json["cost_usd"]
                for r in replies)
    assert round(convs * 1e6) == bill["total_micro_usd"]
    assert round(c.get("/api/v1/usage", headers=auth(key)).json["totals"]["cost_usd"] * 1e6) == bill["total_micro_usd"]
    # applying again changes nothing
    again = app.test_cli_runner().invoke(args=["costs", "reconcile", "--apply"])
    assert "difference 0" in again.output
