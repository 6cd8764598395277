"""Search (GET /conversations?q=), export (GET /conversations/<cid>/export) and batches
(POST /batch, GET /batch/<id>) against the real redis-server and, where replies matter, the
in-thread worker with the echo provider."""
from __future__ import annotations

import csv
import io
import json
import time
import types

import pytest

from chatapp import Cost, hookimpl
from chatapp.export import csv_row
from chatapp.search import search_conversations
from tests.conftest import InThreadWorker, app_with_worker, auth


def create_conv(client, key, title):
    r = client.post("/api/v1/conversations", json={"title": title}, headers=auth(key))
    assert r.status_code == 201, r.json
    return r.json["id"]


def send(client, key, cid, content, wait=False):
    r = client.post(f"/api/v1/conversations/{cid}/messages" + ("?wait=true" if wait else ""),
                    json={"content": content}, headers=auth(key))
    assert r.status_code in (200, 202), r.json
    return r.json


def search(client, key, q, **args):
    r = client.get("/api/v1/conversations", query_string={"q": q, **args}, headers=auth(key))
    assert r.status_code == 200, r.json
    assert set(r.json) == {"items", "next_cursor"}
    return r.json


def search_all(client, key, q, **args):
    """Every item, following next_cursor; also how many requests it took."""
    items, cursor, requests = [], None, 0
    while True:
        page = search(client, key, q, **args, **({"cursor": cursor} if cursor else {}))
        items += page["items"]
        requests += 1
        cursor = page["next_cursor"]
        if not cursor:
            return items, requests


def assert_error(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    assert set(response.json["error"]) == {"code", "message", "details"}
    assert response.json["error"]["code"] == code, response.json
    return response.json["error"]


# -- search ----------------------------------------------------------------------------------

def test_search_matches_titles_and_message_text_case_insensitively(client, user_key, worker):
    trip = create_conv(client, user_key, "Trip to Paris")
    shop = create_conv(client, user_key, "Groceries")
    send(client, user_key, shop, "Remember the PARIS guidebook, and milk", wait=True)
    work = create_conv(client, user_key, "Work")
    send(client, user_key, work, "nothing to see", wait=True)
    for q in ("paris", "  PaRiS  "):
        items = search(client, user_key, q)["items"]
        assert [i["id"] for i in items] == [shop, trip]  # newest activity first
        by_id = {i["id"]: i for i in items}
        assert by_id[trip]["match"] == "title" and by_id[trip]["snippet"] == "Trip to Paris"
        assert by_id[shop]["match"] == "message" and "PARIS guidebook" in by_id[shop]["snippet"]
        assert by_id[shop]["title"] == "Groceries" and by_id[shop]["message_count"] == 2
    # the newest matching message is the echo's reply, which repeats the question
    hit = client.get(f"/api/v1/conversations/{shop}/messages/{by_id[shop]['message_id']}", headers=auth(user_key))
    assert "PARIS" in hit.json["content"]
    assert search(client, user_key, "no such words") == {"items": [], "next_cursor": None}


def test_search_query_is_validated(client, user_key):
    for q in ("", "   ", "x" * 201):
        r = client.get("/api/v1/conversations", query_string={"q": q}, headers=auth(user_key))
        assert_error(r, 400, "invalid_query")
    assert client.get("/api/v1/conversations", query_string={"q": "x" * 200}, headers=auth(user_key)).status_code == 200
    r = client.get("/api/v1/conversations", query_string={"q": "a", "cursor": "!!"}, headers=auth(user_key))
    assert_error(r, 400, "invalid_cursor")
    r = client.get("/api/v1/conversations", query_string={"q": "a", "limit": "0"}, headers=auth(user_key))
    assert_error(r, 400, "invalid_limit")


def test_search_pages_with_the_cursor(client, user_key):
    expected = []
    for i in range(7):
        cid = create_conv(client, user_key, f"Needle {i}" if i % 3 else f"hay {i}")
        if i % 3:
            expected.insert(0, cid)  # newest first
        time.sleep(0.002)  # distinct millisecond timestamps: the order of a tie is unspecified
    first = search(client, user_key, "needle", limit=2)
    assert len(first["items"]) == 2 and first["next_cursor"]
    items, requests = search_all(client, user_key, "needle", limit=2)
    assert [i["id"] for i in items] == expected and requests == 3
    items, requests = search_all(client, user_key, "needle", limit=5)
    assert [i["id"] for i in items] == expected and requests == 1  # the scan reached the end: no cursor


def test_search_scan_is_bounded_per_request(app, client, user_key):
    target = create_conv(client, user_key, "the old one")
    for i in range(6):
        create_conv(client, user_key, f"newer {i}")
    app.config["SEARCH_SCAN_LIMIT"] = 3
    first = search(client, user_key, "old")
    assert first["items"] == [] and first["next_cursor"]  # looked at 3, found nothing yet, goes on
    items, requests = search_all(client, user_key, "old")
    assert [i["id"] for i in items] == [target] and requests == 3  # 7 conversations, 3 per request


def test_search_message_budget_stops_at_a_conversation_boundary(ext, user_key):
    user = ext.users.authenticate(user_key)
    cids = []
    for i in range(3):  # 2 messages each; only the oldest's mention the needle (its title does not)
        cid = ext.store.create_conversation(ext.chat.new_conversation(user, title=f"chat {i}")[1])["id"]
        ext.chat.send(user, conversation_id=cid, content=f"tell me about {'zebras' if i == 0 else 'cats'}")
        cids.append(cid)
    page = search_conversations(ext.store, user.id, "ZEBRA", 10, None, scan_limit=100, message_budget=3)
    assert page["items"] == [] and page["next_cursor"]  # read one conversation (2 messages) of 3
    pages = [page]
    while pages[-1]["next_cursor"]:
        pages.append(search_conversations(ext.store, user.id, "ZEBRA", 10, pages[-1]["next_cursor"], 100, 3))
    assert len(pages) == 3 and [i["id"] for p in pages for i in p["items"]] == [cids[0]]
    assert pages[-1]["items"][0]["match"] == "message"


def test_search_never_returns_another_users_conversations(client, user_key, other_key):
    mine = create_conv(client, user_key, "shared word: secret")
    create_conv(client, other_key, "their secret")
    assert [i["id"] for i in search(client, user_key, "secret")["items"]] == [mine]
    # a cursor only positions the caller's own scan
    cursor = client.get("/api/v1/conversations", query_string={"limit": 1}, headers=auth(other_key)).json
    page = search(client, user_key, "secret", **({"cursor": cursor["next_cursor"]} if cursor["next_cursor"] else {}))
    assert all(i["id"] == mine for i in page["items"])


# -- export ----------------------------------------------------------------------------------

@pytest.fixture()
def exported(client, user_key, worker):
    cid = create_conv(client, user_key, 'Budget "Q3", ünïcode/../x')
    texts = ["=SUM(A1:A9)", 'He said "hi", then left\nsecond line', "-5 degrees", "@home +more"]
    for text in texts:
        send(client, user_key, cid, text, wait=True)
    messages = client.get(f"/api/v1/conversations/{cid}", headers=auth(user_key)).json["messages"]
    assert len(messages) == 8 and all(m["state"] == "done" for m in messages)
    return cid, messages


def export(client, key, cid, fmt):
    return client.get(f"/api/v1/conversations/{cid}/export", query_string={"format": fmt}, headers=auth(key))


def test_export_json(client, user_key, exported):
    cid, messages = exported
    r = export(client, user_key, cid, "json")
    assert r.status_code == 200 and r.mimetype == "application/json"
    assert r.headers["Content-Disposition"] == f'attachment; filename="Budget-Q3-unicode-..-x-{cid}.json"'
    doc = json.loads(r.get_data(as_text=True))
    assert doc["id"] == cid and doc["truncated"] is False and doc["messages_total"] == 8
    assert [(m["id"], m["role"], m["content"]) for m in doc["messages"]] == \
        [(m["id"], m["role"], m["content"]) for m in messages]
    assert doc["messages"][1]["cost_usd"] == messages[1]["cost_usd"] and "usage" in doc["messages"][1]
    assert client.get(f"/api/v1/conversations/{cid}/export", headers=auth(user_key)).mimetype == "application/json"


def test_export_csv_quotes_and_guards_formulas(client, user_key, exported):
    cid, messages = exported
    r = export(client, user_key, cid, "csv")
    assert r.status_code == 200 and r.mimetype == "text/csv" and r.mimetype_params["charset"] == "utf-8"
    assert r.headers["Content-Disposition"].endswith(f'-{cid}.csv"')
    rows = list(csv.reader(io.StringIO(r.get_data().decode("utf-8"))))
    assert rows[0] == ["message_id", "role", "created_at", "state", "content", "cost_usd", "cached",
                       "prompt_tokens", "completion_tokens", "finish_reason", "feedback"]
    assert len(rows) == 9
    for row, m in zip(rows[1:], messages):
        assert row[:4] == [m["id"], m["role"], m["created_at"], m["state"]]
        guarded = "'" + m["content"] if m["content"][:1] in "=+-@" else m["content"]
        assert row[4] == guarded
        if m["role"] == "assistant":
            assert float(row[5]) == m["cost_usd"] and row[6] == "false" and row[9] == "stop"
            assert int(row[7]) == m["usage"]["input_tokens"] and int(row[8]) == m["usage"]["output_tokens"]
        else:
            assert row[5:10] == ["", "", "", "", ""]
        assert row[10] == ""  # nobody rated anything
    assert rows[1][4] == "'=SUM(A1:A9)" and rows[3][4] == 'He said "hi", then left\nsecond line'
    assert rows[5][4] == "'-5 degrees" and rows[7][4] == "'@home +more"


def test_csv_feedback_column_reads_the_rating_when_present():
    base = {"id": "m_1", "role": "assistant", "created_at": "2024-01-01T00:00:00.000Z", "state": "done",
            "content": "+1", "cost_usd": 0.000123, "cached": True, "usage": {"input_tokens": 3, "output_tokens": 4},
            "finish_reason": "stop"}
    assert csv_row({**base, "feedback": {"rating": "down", "comment": "=evil()"}}) == [
        "m_1", "assistant", "2024-01-01T00:00:00.000Z", "done", "'+1", "0.000123", "true", 3, 4, "stop", "down"]
    assert csv_row(base)[-1] == "" and csv_row({**base, "feedback": None})[-1] == ""


def test_export_markdown(client, user_key, exported):
    cid, messages = exported
    r = export(client, user_key, cid, "md")
    assert r.status_code == 200 and r.mimetype == "text/markdown"
    assert r.headers["Content-Disposition"].endswith(f'-{cid}.md"')
    text = r.get_data(as_text=True)
    assert text.startswith('# Budget "Q3", ünïcode/../x\n') and "- Persona: assistant" in text
    for m in messages:
        assert m["content"] in text and m["created_at"] in text
    assert text.count("### User · ") == 4 and text.count("### Assistant · ") == 4
    assert f"### Assistant · {messages[1]['created_at']} · $0.000000 · not cached" in text


def test_export_is_capped_and_says_so(app, client, user_key, exported):
    cid, messages = exported
    app.config["MAX_EXPORT_MESSAGES"] = 3
    doc = json.loads(export(client, user_key, cid, "json").get_data(as_text=True))
    assert doc["truncated"] is True and doc["messages_total"] == 8 and "first 3 of 8" in doc["truncated_note"]
    assert [m["id"] for m in doc["messages"]] == [m["id"] for m in messages[:3]]
    assert "Only the first 3 of 8 messages" in export(client, user_key, cid, "md").get_data(as_text=True)
    r = export(client, user_key, cid, "csv")
    assert len(list(csv.reader(io.StringIO(r.get_data(as_text=True))))) == 4
    assert r.headers["X-Export-Truncated"] == "3 of 8 messages"


def test_export_errors(client, user_key, other_key):
    cid = create_conv(client, user_key, "")
    for fmt in ("json", "md", "csv", "xml"):
        assert_error(export(client, other_key, cid, fmt), 404, "conversation_not_found")  # 404 before 400
        assert_error(export(client, user_key, "c_nope", fmt), 404, "conversation_not_found")
    for fmt in ("xml", "JSONP", "", "jsonx"):
        assert_error(export(client, user_key, cid, fmt), 400, "invalid_format")
    r = export(client, user_key, cid, "csv")  # no messages, no title: a header row and a fallback name
    assert r.get_data(as_text=True).strip().startswith("message_id,role")
    assert r.headers["Content-Disposition"] == f'attachment; filename="conversation-{cid}.csv"'


# -- batch -----------------------------------------------------------------------------------

def priced(micros):
    module = types.ModuleType(f"price_{micros}")
    module.price_generation = hookimpl(lambda request, result: Cost(micros))
    return module


def wait_batch(client, key, bid, timeout=20.0):
    deadline = time.time() + timeout
    while True:
        r = client.get(f"/api/v1/batch/{bid}", headers=auth(key))
        assert r.status_code == 200, r.json
        if r.json["state"] == "done":
            return r.json
        assert time.time() < deadline, r.json
        time.sleep(0.05)


def test_batch_runs_to_done_with_answers_and_cost(app_config):
    with app_with_worker({**app_config, "CACHE_ENABLED": False}, extra_plugins=(priced(5000),)) as (app, ext):
        client = app.test_client()
        _, key = ext.users.create("batcher")
        prompts = ["What is 2+2?", "Name a colour", "Say hi"]
        r = client.post("/api/v1/batch", json={"prompts": prompts, "persona": "assistant",
                                               "params": {"temperature": 0.2}}, headers=auth(key))
        assert r.status_code == 202, r.json
        assert r.json["total"] == 3 and r.json["id"].startswith("b_") and r.headers["Location"].endswith(r.json["id"])
        assert r.json["persona"] == "assistant" and r.json["params"] == {"temperature": 0.2}
        batch = wait_batch(client, key, r.json["id"])
        assert (batch["done"], batch["failed"], batch["cancelled"], batch["pending"]) == (3, 0, 0, 0)
        assert [i["index"] for i in batch["items"]] == [0, 1, 2]
        for item, prompt in zip(batch["items"], prompts):
            assert item["prompt"] == prompt and item["state"] == "done" and "error" not in item
            assert item["content"] == f"Echo (assistant): {prompt}" and item["cost_usd"] == 0.005
            conv = client.get(f"/api/v1/conversations/{item['conversation_id']}", headers=auth(key)).json
            assert conv["persona"] == "assistant" and conv["title"] == prompt
            assert [m["id"] for m in conv["messages"]][1] == item["message_id"]
        assert batch["total_cost_usd"] == pytest.approx(0.015) and batch["average_cost_usd"] == 0.005
        # one-shot answers stay out of the sidebar and its search, but are indexed for the batch
        listing = client.get("/api/v1/conversations", headers=auth(key)).json
        assert listing["items"] == [] and search(client, key, "colour")["items"] == []
        user = ext.users.by_name("batcher")
        batch_index = ext.redis.zrange(f"{ext.prefix}user:{user.id}:batchconvs", 0, -1)
        assert set(batch_index) == {i["conversation_id"] for i in batch["items"]}
        # deleting one item's conversation removes it from that index; the batch says so
        gone = batch["items"][0]["conversation_id"]
        assert client.delete(f"/api/v1/conversations/{gone}", headers=auth(key)).status_code == 204
        assert ext.redis.zscore(f"{ext.prefix}user:{user.id}:batchconvs", gone) is None
        after = client.get(f"/api/v1/batch/{batch['id']}", headers=auth(key)).json
        assert after["items"][0]["state"] == "cancelled" and after["items"][0]["error"]["code"] == "conversation_deleted"
        assert ext.redis.ttl(f"{ext.prefix}batch:{batch['id']}") > 6 * 24 * 3600


def test_batch_item_refused_by_budget_fails_alone(app_config):
    # each reply costs exactly the $0.01 held for it, so a $0.02 day takes two whatever the timing
    config = {**app_config, "BUDGET_DAILY_USD": 0.02, "BUDGET_RESERVE_USD": 0.01, "CACHE_ENABLED": False}
    with app_with_worker(config, extra_plugins=(priced(10_000),)) as (app, ext):
        client = app.test_client()
        _, key = ext.users.create("thrifty")
        r = client.post("/api/v1/batch", json={"prompts": ["a", "b", "c", "d"]}, headers=auth(key))
        assert r.status_code == 202, r.json
        batch = wait_batch(client, key, r.json["id"])
        assert (batch["done"], batch["failed"], batch["pending"]) == (2, 2, 0)
        refused = [i for i in batch["items"] if i["state"] == "failed"]
        assert [i["index"] for i in refused] == [2, 3]
        for item in refused:
            assert item["error"]["code"] == "budget_exhausted" and set(item["error"]) == {"code", "message", "details"}
            assert item["conversation_id"] is None and item["message_id"] is None and item["cost_usd"] == 0
        assert batch["total_cost_usd"] == pytest.approx(0.02) and batch["average_cost_usd"] == 0.01


def test_batch_goes_to_the_batch_queue_and_counts_once(app, client, user_key, ext):
    app.config.update(MAX_ACTIVE_GENERATIONS=2, RATE_LIMIT_SENDS_PER_MINUTE=3)
    assert ext.queue.names == [app.config["QUEUE_NAME"], app.config["QUEUE_NAME"] + "-batch"]
    r = client.post("/api/v1/batch", json={"prompts": [f"q{i}" for i in range(5)]}, headers=auth(user_key))
    assert r.status_code == 202 and r.json["pending"] == 5 and r.json["state"] == "running"
    assert ext.queue.depth(batch=True) == 5 and ext.queue.depth() == 0
    # five queued batch replies neither use up MAX_ACTIVE_GENERATIONS (2) nor five sends of 3
    cid = create_conv(client, user_key, "chat")
    assert client.post(f"/api/v1/conversations/{cid}/messages", json={"content": "x"},
                       headers=auth(user_key)).status_code == 202
    assert client.post(f"/api/v1/conversations/{cid}/messages", json={"content": "y"},
                       headers=auth(user_key)).status_code == 202
    assert ext.queue.depth() == 2
    third = client.post(f"/api/v1/conversations/{cid}/messages", json={"content": "z"}, headers=auth(user_key))
    assert_error(third, 429, "rate_limited")  # the batch was one send, these two the others
    again = client.post("/api/v1/batch", json={"prompts": ["more"]}, headers=auth(user_key))
    assert_error(again, 429, "rate_limited")
    # the worker takes interactive jobs first, then the batch, and the batch completes
    worker = InThreadWorker(ext)
    try:
        batch = wait_batch(client, user_key, r.json["id"])
        assert batch["done"] == 5 and ext.queue.depth(batch=True) == 0
    finally:
        worker.stop()


def test_batch_limits_and_validation(app, client, user_key):
    app.config.update(MAX_BATCH_PROMPTS=3, MAX_MESSAGE_BYTES=10)
    post = lambda body: client.post("/api/v1/batch", json=body, headers=auth(user_key))
    err = assert_error(post({"prompts": ["a", "b", "c", "d"]}), 413, "too_many_prompts")
    assert err["details"] == {"limit": 3, "count": 4}
    err = assert_error(post({"prompts": ["ok", "x" * 11]}), 413, "content_too_large")
    assert err["details"]["index"] == 1
    assert_error(post({"prompts": ["ok", "  "]}), 400, "empty_content")
    assert_error(post({"prompts": []}), 400, "validation_error")
    assert_error(post({}), 400, "validation_error")
    assert_error(post({"prompts": ["a", 3]}), 400, "validation_error")
    assert_error(post({"prompts": "a"}), 400, "validation_error")
    assert_error(post({"prompts": ["a"], "bogus": 1}), 400, "validation_error")
    assert_error(post({"prompts": ["a"], "params": {"temperature": 9}}), 400, "validation_error")
    assert_error(post({"prompts": ["a"], "persona": "nobody"}), 400, "unknown_persona")
    r = client.post("/api/v1/batch", data="not json", headers=auth(user_key))
    assert_error(r, 400, "invalid_json")
    assert client.post("/api/v1/batch", json={"prompts": ["a"]}).status_code == 401
    # nothing was stored by any refused batch
    assert client.get("/api/v1/conversations", headers=auth(user_key)).json["items"] == []


def test_batch_is_private(app, client, user_key, other_key, ext):
    r = client.post("/api/v1/batch", json={"prompts": ["mine"]}, headers=auth(user_key))
    assert r.status_code == 202
    assert_error(client.get(f"/api/v1/batch/{r.json['id']}", headers=auth(other_key)), 404, "batch_not_found")
    assert_error(client.get("/api/v1/batch/b_nope", headers=auth(user_key)), 404, "batch_not_found")
    cid = r.json["items"][0]["conversation_id"]
    assert_error(client.get(f"/api/v1/conversations/{cid}", headers=auth(other_key)), 404, "conversation_not_found")
    assert client.get(f"/api/v1/batch/{r.json['id']}").status_code == 401

