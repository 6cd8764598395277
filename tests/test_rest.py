"""REST API: every route of DESIGN.md section 5 in scope, its errors, and cross-user isolation."""
from __future__ import annotations

import json

import pytest

from tests.conftest import auth


def create_conv(client, key, **body):
    r = client.post("/api/v1/conversations", json=body, headers=auth(key))
    assert r.status_code == 201, r.json
    return r.json


def send(client, key, cid, content="hello world", wait=False, **body):
    url = f"/api/v1/conversations/{cid}/messages" + ("?wait=true" if wait else "")
    return client.post(url, json={"content": content, **body}, headers=auth(key))


def assert_error(response, status, code=None):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.json
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


def test_conversation_crud(client, user_key):
    conv = create_conv(client, user_key, title="Trip plans")
    for field in ("id", "title", "persona", "created_at", "updated_at", "message_count", "cost_usd"):
        assert field in conv
    assert conv["title"] == "Trip plans" and conv["message_count"] == 0 and conv["created_at"].endswith("Z")
    got = client.get(f"/api/v1/conversations/{conv['id']}", headers=auth(user_key)).json
    assert got["messages"] == [] and got["id"] == conv["id"]
    r = client.patch(f"/api/v1/conversations/{conv['id']}", json={"title": "Renamed"}, headers=auth(user_key))
    assert r.status_code == 200 and r.json["title"] == "Renamed"
    assert client.delete(f"/api/v1/conversations/{conv['id']}", headers=auth(user_key)).status_code == 204
    assert_error(client.get(f"/api/v1/conversations/{conv['id']}", headers=auth(user_key)), 404)


def test_send_and_wait_returns_finished_reply(client, user_key, worker):
    conv = create_conv(client, user_key)
    r = send(client, user_key, conv["id"], "hello there", wait=True)
    assert r.status_code == 200, r.json
    reply = r.json["message"]
    assert reply["state"] == "done" and reply["content"] == "Echo (assistant): hello there"
    assert r.json["user_message"]["content"] == "hello there"
    assert reply["usage"]["output_tokens"] == 4 and reply["cached"] is False and reply["finish_reason"] == "stop"
    conv = client.get(f"/api/v1/conversations/{conv['id']}", headers=auth(user_key)).json
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"] and conv["message_count"] == 2


def test_send_without_wait_is_202_then_done(client, user_key, worker, ext):
    conv = create_conv(client, user_key)
    r = send(client, user_key, conv["id"])
    assert r.status_code == 202 and r.json["state"] in ("queued", "generating", "done")
    mid = r.json["message_id"]
    ext.relay.wait(mid, 10)
    got = client.get(f"/api/v1/conversations/{conv['id']}/messages/{mid}", headers=auth(user_key)).json
    assert got["state"] == "done" and got["role"] == "assistant" and got["conversation_id"] == conv["id"]


def test_idempotent_client_message_id(client, user_key, ext):
    conv = create_conv(client, user_key)
    first = send(client, user_key, conv["id"], client_message_id="abc-1")
    second = send(client, user_key, conv["id"], client_message_id="abc-1")
    assert first.status_code == second.status_code == 202
    assert first.json["message_id"] == second.json["message_id"]
    assert first.json["user_message"]["id"] == second.json["user_message"]["id"]
    assert ext.queue.depth() == 1  # one job, not two
    msgs = client.get(f"/api/v1/conversations/{conv['id']}/messages", headers=auth(user_key)).json["items"]
    assert len(msgs) == 2


def test_message_pagination(client, user_key, worker):
    conv = create_conv(client, user_key)
    for i in range(3):
        assert send(client, user_key, conv["id"], f"m{i}", wait=True).status_code == 200
    page1 = client.get(f"/api/v1/conversations/{conv['id']}/messages?limit=4", headers=auth(user_key)).json
    assert [m["content"] for m in page1["items"]][0] == "m1" and len(page1["items"]) == 4
    page2 = client.get(f"/api/v1/conversations/{conv['id']}/messages?limit=4&before={page1['next_cursor']}",
                       headers=auth(user_key)).json
    assert [m["content"] for m in page2["items"]] == ["m0", "Echo (assistant): m0"] and page2["next_cursor"] is None


def test_conversation_list_cursor_newest_activity_first(client, user_key):
    ids = [create_conv(client, user_key, title=f"c{i}")["id"] for i in range(5)]
    client.patch(f"/api/v1/conversations/{ids[0]}", json={"title": "bumped"}, headers=auth(user_key))
    seen, cursor = [], None
    while True:
        url = "/api/v1/conversations?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=auth(user_key)).json
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen[0] == ids[0] and sorted(seen) == sorted(ids) and len(seen) == 5


def test_cancel_queued_reply(client, user_key, ext):
    conv = create_conv(client, user_key)
    mid = send(client, user_key, conv["id"]).json["message_id"]  # no worker: stays queued
    r = client.post(f"/api/v1/conversations/{conv['id']}/messages/{mid}/cancel", headers=auth(user_key))
    assert r.status_code == 200 and r.json["state"] == "cancelled" and r.json["finish_reason"] == "cancelled"


def test_one_shot_chat(client, user_key, worker):
    r = client.post("/api/v1/chat", json={"message": "What is 2+2?", "max_tokens": 50}, headers=auth(user_key))
    assert r.status_code == 200, r.json
    body = r.json
    assert set(body) >= {"conversation_id", "message_id", "message", "cost_usd", "cached", "elapsed_s", "usage"}
    assert body["message"] == "Echo (assistant): What is 2+2?"
    again = client.post("/api/v1/chat", json={"message": "and 3+3?", "conversation_id": body["conversation_id"]},
                        headers=auth(user_key)).json
    assert again["conversation_id"] == body["conversation_id"]
    conv = client.get(f"/api/v1/conversations/{body['conversation_id']}", headers=auth(user_key)).json
    assert conv["message_count"] == 4


def test_one_shot_system_prompt_reaches_the_provider(client, user_key, worker, ext):
    r = client.post("/api/v1/chat", json={"message": "hi", "system_prompt": "You are terse."}, headers=auth(user_key))
    assert r.status_code == 200
    conv = ext.store.conversation(ext.users.authenticate(user_key).id, r.json["conversation_id"])
    assert conv["system_prompt"] == "You are terse."


@pytest.mark.parametrize("body,status,code", [
    ("{not json", 400, "invalid_json"),
    ("[1, 2]", 400, "invalid_json"),
    (json.dumps({"content": 5}), 400, "validation_error"),
    (json.dumps({"content": "x", "bogus": 1}), 400, "validation_error"),
    (json.dumps({}), 400, "validation_error"),
    (json.dumps({"content": "   "}), 400, "empty_content"),
    (json.dumps({"content": "x" * (32 * 1024 + 1)}), 413, "content_too_large"),
    (json.dumps({"content": "x", "params": {"temperature": "hot"}}), 400, "validation_error"),
    (json.dumps({"content": "x", "params": {"max_tokens": 10**6}}), 400, "validation_error"),
    (json.dumps({"content": "x", "params": {"cache": "maybe"}}), 400, "validation_error"),
    # found by tests/test_fuzz.py: a lone surrogate escape decodes to text no UTF-8 encoder takes (was a 500)
    ('{"content": "hi \\ud800"}', 400, "invalid_json"),
    ('{"content": "hi", "client_message_id": "x", "params": {"\\udfff": 1}}', 400, "invalid_json"),
    ("[" * 100_000 + "]" * 100_000, 400, "invalid_json"),  # nested too deep to parse (was a 500)
    (b'{"content": "\xff"}', 400, "invalid_json"),  # not UTF-8
])
def test_bad_input_gets_clear_error_and_writes_nothing(client, user_key, body, status, code):
    conv = create_conv(client, user_key)
    r = client.post(f"/api/v1/conversations/{conv['id']}/messages", data=body, headers=auth(user_key),
                    content_type="application/json")
    assert_error(r, status, code)
    assert client.get(f"/api/v1/conversations/{conv['id']}", headers=auth(user_key)).json["message_count"] == 0


def test_huge_body_is_413(client, user_key):
    r = client.post("/api/v1/chat", data="x" * (2 * 1024 * 1024), headers=auth(user_key),
                    content_type="application/json")
    assert_error(r, 413, "too_large")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}])
def test_missing_or_invalid_key_is_401(client, headers):
    for method, path in [("get", "/api/v1/conversations"), ("post", "/api/v1/chat"), ("get", "/api/v1/personas")]:
        assert_error(getattr(client, method)(path, headers=headers), 401, "unauthorized")


def test_unknown_route_and_method_use_canonical_body(client, user_key):
    assert_error(client.get("/api/v1/nope", headers=auth(user_key)), 404)
    assert_error(client.put("/api/v1/conversations", headers=auth(user_key)), 405, "method_not_allowed")


def test_other_users_resources_are_404_everywhere(client, user_key, other_key, worker):
    conv = create_conv(client, user_key)
    r = send(client, user_key, conv["id"], "secret plans", wait=True)
    mid, umid, cid = r.json["message_id"], r.json["user_message"]["id"], conv["id"]
    k = other_key
    calls = [
        client.get(f"/api/v1/conversations/{cid}", headers=auth(k)),
        client.patch(f"/api/v1/conversations/{cid}", json={"title": "x"}, headers=auth(k)),
        client.delete(f"/api/v1/conversations/{cid}", headers=auth(k)),
        client.get(f"/api/v1/conversations/{cid}/messages", headers=auth(k)),
        client.post(f"/api/v1/conversations/{cid}/messages", json={"content": "hi"}, headers=auth(k)),
        client.get(f"/api/v1/conversations/{cid}/messages/{mid}", headers=auth(k)),
        client.get(f"/api/v1/conversations/{cid}/messages/{umid}", headers=auth(k)),
        client.post(f"/api/v1/conversations/{cid}/messages/{mid}/cancel", headers=auth(k)),
        client.post("/api/v1/chat", json={"message": "hi", "conversation_id": cid}, headers=auth(k)),
    ]
    for r in calls:
        err = assert_error(r, 404)
        assert "secret" not in json.dumps(err)
    assert client.get("/api/v1/conversations", headers=auth(k)).json["items"] == []
    # and the owner's data is intact
    owner = client.get(f"/api/v1/conversations/{cid}", headers=auth(user_key)).json
    assert owner["message_count"] == 2 and owner["title"] != "x"


def test_message_of_another_conversation_is_404(client, user_key, worker):
    a, b = create_conv(client, user_key), create_conv(client, user_key)
    mid = send(client, user_key, a["id"], wait=True).json["message_id"]
    assert_error(client.get(f"/api/v1/conversations/{b['id']}/messages/{mid}", headers=auth(user_key)), 404)


def test_unknown_persona_provider_model(client, user_key):
    assert_error(client.post("/api/v1/conversations", json={"persona": "nobody"}, headers=auth(user_key)), 400,
                 "unknown_persona")
    assert_error(client.post("/api/v1/conversations", json={"provider": "nope"}, headers=auth(user_key)), 400,
                 "unknown_provider")
    assert_error(client.post("/api/v1/conversations", json={"provider": "echo", "model": "gpt-9"},
                             headers=auth(user_key)), 400, "unknown_model")


def test_bad_limit_and_cursor(client, user_key):
    assert_error(client.get("/api/v1/conversations?limit=0", headers=auth(user_key)), 400, "invalid_limit")
    assert_error(client.get("/api/v1/conversations?limit=abc", headers=auth(user_key)), 400, "invalid_limit")
    assert_error(client.get("/api/v1/conversations?cursor=@@@", headers=auth(user_key)), 400, "invalid_cursor")


def test_personas_and_providers(client, user_key):
    personas = client.get("/api/v1/personas", headers=auth(user_key)).json
    assert "assistant" in [p["name"] for p in personas["items"]]
    assert client.get("/api/v1/personas/assistant", headers=auth(user_key)).json["greeting"]
    assert_error(client.get("/api/v1/personas/nobody", headers=auth(user_key)), 404)
    providers = client.get("/api/v1/providers", headers=auth(user_key)).json
    assert "echo" in [p["id"] for p in providers["items"]]


def test_health_ready_plugins(client, worker):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["checks"]["workers"] >= 1
    names = [p["name"] for p in client.get("/-/plugins").json["items"]]
    assert "plugins.echo" in names and "plugins.pricing" in names


def test_readyz_without_worker_is_503(client):
    assert client.get("/readyz").status_code == 503


def test_delete_removes_messages_streams_and_indexes(client, user_key, worker, ext):
    conv = create_conv(client, user_key)
    mid = send(client, user_key, conv["id"], client_message_id="k1", wait=True).json["message_id"]
    client.delete(f"/api/v1/conversations/{conv['id']}", headers=auth(user_key))
    p = ext.prefix
    assert not ext.redis.exists(f"{p}conv:{conv['id']}", f"{p}conv:{conv['id']}:msgs", f"{p}msg:{mid}", f"{p}ev:{mid}")
    uid = ext.users.authenticate(user_key).id
    assert not ext.redis.exists(f"{p}idem:{uid}:{conv['id']}:k1")
    # the same client_message_id is free again
    conv2 = create_conv(client, user_key)
    assert send(client, user_key, conv2["id"], client_message_id="k1").json["message_id"] != mid
    assert ext.redis.zscore(f"{p}user:{uid}:convs", conv["id"]) is None


def test_client_message_id_is_scoped_to_the_conversation_and_content(client, user_key):
    a, b = create_conv(client, user_key), create_conv(client, user_key)
    first = send(client, user_key, a["id"], "same text", client_message_id="k-1")
    other_conv = send(client, user_key, b["id"], "same text", client_message_id="k-1")
    assert other_conv.status_code == 202 and other_conv.json["message_id"] != first.json["message_id"]
    assert other_conv.json["user_message"]["conversation_id"] == b["id"]
    changed = send(client, user_key, a["id"], "different text", client_message_id="k-1")
    assert_error(changed, 409, "idempotency_conflict")


def test_json_without_content_type_is_accepted(client, user_key):
    r = client.post("/api/v1/conversations", data='{"title": "curl -d"}', headers=auth(user_key),
                    content_type="application/x-www-form-urlencoded")
    assert r.status_code == 201 and r.json["title"] == "curl -d"


def test_patch_someone_elses_conversation_is_404_even_with_bad_body(client, user_key, other_key):
    conv = create_conv(client, user_key)
    r = client.patch(f"/api/v1/conversations/{conv['id']}", json={"bogus": 1}, headers=auth(other_key))
    assert_error(r, 404)
