"""Budgets: atomic reservations, 402 with what remains and when it resets, settle and release."""
from __future__ import annotations

import threading
import time
import types

import pytest

from chatapp import Cost, hookimpl
from chatapp.errors import BudgetExhausted
from tests.conftest import InThreadWorker, auth, close_app, make_app


@pytest.fixture()
def budget_app(app_config):
    module = types.ModuleType("price_5000")
    module.price_generation = hookimpl(lambda request, result: Cost(5000))
    app = make_app({**app_config, "BUDGET_DAILY_USD": 0.10, "BUDGET_RESERVE_USD": 0.01, "CACHE_ENABLED": False},
                   extra_plugins=(module,))
    ext = app.extensions["chatapp"]
    yield app, ext
    close_app(app)


def test_fifty_concurrent_sends_never_overspend(budget_app):
    app, ext = budget_app
    user, key = ext.users.create("racer")
    accepted, refused = [], []
    start = threading.Barrier(50)

    def send(i):
        start.wait()
        try:
            accepted.append(ext.chat.send(user, conversation_id=None, content=f"q{i}"))
        except BudgetExhausted as err:
            refused.append(err)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == 10 and len(refused) == 40  # $0.10 / $0.01 held per reply
    err = refused[0]
    assert err.status == 402 and err.details["remaining_usd"] == 0 and err.details["resets_at"].endswith("T00:00:00Z")
    # the replies run and settle at their real cost ($0.005 each): the holds are released
    worker = InThreadWorker(ext)
    try:
        deadline = time.time() + 20
        while app.test_client().get("/api/v1/usage", headers=auth(key)).json["budget"]["spent_today_usd"] < 0.05:
            assert time.time() < deadline
            time.sleep(0.1)
        r = app.test_client().post("/api/v1/chat", json={"message": "after settling"}, headers=auth(key))
        assert r.status_code == 200
    finally:
        worker.stop()


def test_402_over_http_and_cancel_releases_the_hold(budget_app):
    app, ext = budget_app
    c = app.test_client()
    _, admin = ext.users.create("admin", admin=True)
    user, key = ext.users.create("capped")
    assert c.put(f"/api/v1/admin/budgets/{user.id}", json={"daily_usd": 0.01}, headers=auth(key)).status_code == 403
    status = c.put(f"/api/v1/admin/budgets/{user.id}", json={"daily_usd": 0.01}, headers=auth(admin)).json
    assert status["daily_limit_usd"] == 0.01
    conv = c.post("/api/v1/conversations", json={}, headers=auth(key)).json
    first = c.post(f"/api/v1/conversations/{conv['id']}/messages", json={"content": "a"}, headers=auth(key))
    assert first.status_code == 202  # holds the whole $0.01
    second = c.post(f"/api/v1/conversations/{conv['id']}/messages", json={"content": "b"}, headers=auth(key))
    assert second.status_code == 402 and second.json["error"]["code"] == "budget_exhausted"
    assert second.json["error"]["details"]["limit_usd"] == 0.01
    c.post(f"/api/v1/conversations/{conv['id']}/messages/{first.json['message_id']}/cancel", headers=auth(key))
    worker = InThreadWorker(ext)  # runs the outbox: the stopped reply cost nothing, its hold goes
    try:
        deadline = time.time() + 10
        while True:
            third = c.post(f"/api/v1/conversations/{conv['id']}/messages", json={"content": "c"}, headers=auth(key))
            if third.status_code == 202 or time.time() > deadline:
                break
            time.sleep(0.1)
        assert third.status_code == 202
    finally:
        worker.stop()


def test_budget_route_validation(budget_app):
    app, ext = budget_app
    _, admin = ext.users.create("admin2", admin=True)
    user, _ = ext.users.create("target")
    c = app.test_client()
    assert c.put(f"/api/v1/admin/budgets/{user.id}", json={"daily_usd": "lots"}, headers=auth(admin)).status_code == 400
    assert c.put(f"/api/v1/admin/budgets/{user.id}", json={"weekly": 1}, headers=auth(admin)).status_code == 400
    assert c.put("/api/v1/admin/budgets/u_nobody", json={"daily_usd": 1}, headers=auth(admin)).status_code == 404


def test_a_send_refused_after_its_hold_releases_it_at_once(app_config):
    """Refusals the send script makes atomically (the active-replies limit, a racing duplicate)
    come after before_generation placed the hold: without generation_refused it would block the
    budget until it expired (~the job timeout)."""
    app = make_app({**app_config, "BUDGET_DAILY_USD": 0.02, "BUDGET_RESERVE_USD": 0.01, "CACHE_ENABLED": False,
                    "MAX_ACTIVE_GENERATIONS": 1})
    try:
        ext = app.extensions["chatapp"]
        c = app.test_client()
        user, key = ext.users.create("holder")
        conv = c.post("/api/v1/conversations", json={}, headers=auth(key)).json["id"]
        first = c.post(f"/api/v1/conversations/{conv}/messages", json={"content": "a"}, headers=auth(key))
        assert first.status_code == 202
        for _ in range(3):  # no worker: the first reply stays active, so each of these is refused
            r = c.post(f"/api/v1/conversations/{conv}/messages", json={"content": "b"}, headers=auth(key))
            assert r.status_code == 429 and r.json["error"]["code"] == "too_many_generations"
        held = ext.redis.zrange(f"{ext.prefix}budget:reserved:{user.id}", 0, -1)
        assert held == [f"{first.json['message_id']}|10000"]  # only the accepted send's hold
    finally:
        close_app(app)


def test_a_settlement_is_guarded_once_for_the_redelivery_window(ext):
    """settle() adds a reply's cost once however often it runs; its guard lives as long as the
    outbox could deliver the reply again (a week), not a month."""
    from chatapp.hookspecs import REDELIVERY_GUARD_S
    from plugins import budgets

    at = time.time()
    for _ in range(2):  # a redelivery
        budgets.settle(ext.host, [("u-guard", "m-guard", at, 2500)])
    day_key, month_key, _ = budgets.keys(ext.host, "u-guard", at)
    assert ext.redis.get(day_key) == "2500" and ext.redis.get(month_key) == "2500"
    ttl = ext.redis.ttl(ext.host.key("budget", "settled", "m-guard"))
    assert REDELIVERY_GUARD_S - 60 < ttl <= REDELIVERY_GUARD_S


def test_a_reply_that_cost_nothing_releases_its_hold_and_leaves_no_guard(ext):
    """Releasing a hold is safe to repeat, so a zero-cost settlement needs no guard key: a cache
    hit or a free reply leaves nothing behind in Redis for a week."""
    from plugins import budgets

    at = time.time()
    _, _, reserved = budgets.keys(ext.host, "u-free", at)
    ext.redis.zadd(reserved, {"m-free|1000": at * 1000 + 60_000, "m-other|500": at * 1000 + 60_000})
    for _ in range(2):  # a redelivery changes nothing
        budgets.settle(ext.host, [("u-free", "m-free", at, 0)])
    assert ext.redis.zrange(reserved, 0, -1) == ["m-other|500"]
    assert not ext.redis.exists(ext.host.key("budget", "settled", "m-free"))
    day_key, month_key, _ = budgets.keys(ext.host, "u-free", at)
    assert ext.redis.get(day_key) is None and ext.redis.get(month_key) is None
