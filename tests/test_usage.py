"""Usage analytics: totals, averages, projections, CSV, admin views, counted exactly once."""
from __future__ import annotations

import csv
import io
import time
import types

import pytest

from chatapp import Cost, FinishedReply, hookimpl
from chatapp.chat import request_for_reply, result_from_record
from plugins import usage
from tests.conftest import InThreadWorker, app_with_worker, auth, close_app, make_app


@pytest.fixture()
def priced(app_config):
    module = types.ModuleType("price_3000")
    module.price_generation = hookimpl(lambda request, result: Cost(3000))
    with app_with_worker(app_config, (module,)) as running:
        yield running


def settled(client, key, replies, timeout=10):
    deadline = time.time() + timeout
    while True:
        report = client.get("/api/v1/usage", headers=auth(key)).json
        if report["totals"]["replies"] >= replies or time.time() > deadline:
            return report
        time.sleep(0.05)


def test_usage_totals_averages_cache_and_projections(priced):
    app, ext = priced
    c = app.test_client()
    _, key = ext.users.create("spender")
    for question in ("one", "two", "one"):  # the second "one" is a cache hit
        assert c.post("/api/v1/chat", json={"message": question}, headers=auth(key)).status_code == 200
        time.sleep(0.3)  # let the first "one" reach the cache before it is asked again
    report = settled(c, key, 3)
    totals = report["totals"]
    assert totals["replies"] == 3 and totals["done"] == 3 and totals["cached"] == 1
    assert totals["cost_usd"] == 0.006 and totals["cost_saved_usd"] == 0.003
    assert report["averages"]["cost_per_reply_usd"] == 0.002
    assert report["averages"]["time_to_first_token_s"] is not None
    assert report["projections"]["per_1000_requests_usd"] == 2.0
    assert report["cache"]["hits"] == 1 and report["period"]["days"] == 30
    assert report["daily"][-1]["replies"] == 3
    rows = list(csv.DictReader(io.StringIO(c.get("/api/v1/usage?format=csv&days=3", headers=auth(key)).get_data(
        as_text=True))))
    assert len(rows) == 3 and rows[-1]["replies"] == "3"


def test_counted_once_even_if_the_outbox_delivers_twice(priced):
    app, ext = priced
    _, key = ext.users.create("twice")
    body = app.test_client().post("/api/v1/chat", json={"message": "dup"}, headers=auth(key)).json
    settled(app.test_client(), key, 1)
    request, _ = request_for_reply(ext, body["message_id"])
    record = ext.redis.hgetall(f"{ext.prefix}msg:{body['message_id']}")
    usage.after_generation_batch([FinishedReply(request, result_from_record(record))], ext.host)  # a redelivery
    assert settled(app.test_client(), key, 1)["totals"]["replies"] == 1


def test_admin_views_and_message_log(priced):
    app, ext = priced
    c = app.test_client()
    _, key = ext.users.create("worker-bee")
    _, admin = ext.users.create("queen", admin=True)
    c.post("/api/v1/chat", json={"message": "log me"}, headers=auth(key))
    settled(c, key, 1)
    assert c.get("/api/v1/admin/usage", headers=auth(key)).status_code == 403
    everyone = c.get("/api/v1/admin/usage", headers=auth(admin)).json
    assert everyone["totals"]["replies"] >= 1
    assert everyone["by_persona"]["assistant"]["replies"] >= 1 and everyone["by_model"]["echo/echo-1"]["cost_usd"] > 0
    log = list(csv.DictReader(io.StringIO(c.get("/api/v1/admin/usage/messages.csv?days=1",
                                                 headers=auth(admin)).get_data(as_text=True))))
    assert log and log[-1]["cost_micros"] == "3000" and log[-1]["state"] == "done" and int(log[-1]["reply_chars"]) > 0
    assert "log me" not in c.get("/api/v1/admin/usage/messages.csv", headers=auth(admin)).get_data(as_text=True)


def test_days_is_validated(client, user_key):
    r = client.get("/api/v1/usage?days=0", headers=auth(user_key))
    assert r.status_code == 400 and r.json["error"]["code"] == "invalid_days"
    assert client.get("/api/v1/usage").status_code == 401


def test_reply_of_a_deleted_conversation_still_settles(app_config):
    module = types.ModuleType("price_0")
    app = make_app({**app_config, "BUDGET_DAILY_USD": 0.01, "BUDGET_RESERVE_USD": 0.01}, extra_plugins=(module,))
    ext = app.extensions["chatapp"]
    c = app.test_client()
    try:
        _, key = ext.users.create("deleter")
        conv = c.post("/api/v1/conversations", json={}, headers=auth(key)).json
        mid = c.post(f"/api/v1/conversations/{conv['id']}/messages", json={"content": "x"},
                     headers=auth(key)).json["message_id"]
        assert c.post(f"/api/v1/conversations/{conv['id']}/messages", json={"content": "y"},
                      headers=auth(key)).status_code == 402  # the first holds the whole budget
        c.post(f"/api/v1/conversations/{conv['id']}/messages/{mid}/cancel", headers=auth(key))
        assert c.delete(f"/api/v1/conversations/{conv['id']}", headers=auth(key)).status_code == 204
        worker = InThreadWorker(ext)  # the outbox entry outlived the conversation
        try:
            report = settled(c, key, 1)
        finally:
            worker.stop()
        assert report["totals"]["cancelled"] == 1
        again = c.post("/api/v1/conversations", json={}, headers=auth(key)).json
        assert c.post(f"/api/v1/conversations/{again['id']}/messages", json={"content": "budget is free again"},
                      headers=auth(key)).status_code == 202  # the hold was released, not stranded
    finally:
        close_app(app)


def test_a_batch_sums_each_hash_once_and_counts_each_reply_once(ext):
    """The batch script sums the counted replies' increments per hash and field: the totals are
    the per-reply sums exactly (large costs included), a reply already counted adds nothing, and
    replies of other days, users and models land in their own hashes."""
    from chatapp.ids import utc_day
    from chatapp.models import ChatRequest, GenerationResult, Message, Usage

    day1, day2 = 1_796_000_000.0, 1_796_000_000.0 + 86400  # two UTC days

    def reply(mid: str, uid: str, model: str, at: float, cost: int, out_tokens: int) -> FinishedReply:
        request = ChatRequest(mid, "c1", uid, "echo", model, [Message("user", "hi there")])
        result = GenerationResult(mid, "done", "x" * out_tokens, usage=Usage(3, out_tokens), provider="echo",
                                  model=model, started_at=at - 2, first_token_at=at - 1.5, finished_at=at,
                                  cost=Cost(cost))
        return FinishedReply(request, result)

    big = 123_456_789_012_345  # micros: larger than a Lua number prints exactly with %s
    first = [reply("m1", "u1", "a", day1, big, 5), reply("m2", "u1", "a", day1, 7, 11)]
    usage.after_generation_batch(first, ext.host)
    usage.after_generation_batch([*first, reply("m3", "u2", "b", day1, 1, 2), reply("m4", "u1", "a", day2, 2, 3)],
                                 ext.host)  # m1 and m2 delivered again
    user1 = ext.redis.hgetall(ext.host.key("usage", "user", "u1", utc_day(day1)))
    assert user1 == {"replies": "2", "done": "2", "cost_micros": str(big + 7), "input_tokens": "6",
                     "output_tokens": "16", "ttft_ms_sum": "1000", "ttft_n": "2", "total_ms_sum": "4000",
                     "total_n": "2", "reply_chars": "16", "prompt_chars": "16"}
    everyone = ext.redis.hgetall(ext.host.key("usage", "all", utc_day(day1)))
    assert everyone["replies"] == "3" and everyone["cost_micros"] == str(big + 8)
    assert ext.redis.hgetall(ext.host.key("usage", "model", "echo/b", utc_day(day1)))["replies"] == "1"
    assert ext.redis.hgetall(ext.host.key("usage", "user", "u1", utc_day(day2)))["output_tokens"] == "3"
    assert ext.redis.xlen(ext.host.key("usage", "log")) == 4
    # each reply's guard lives as long as a redelivery could come, not a month
    from chatapp.hookspecs import REDELIVERY_GUARD_S
    assert REDELIVERY_GUARD_S - 60 < ext.redis.ttl(ext.host.key("usage", "seen", "m3")) <= REDELIVERY_GUARD_S
