"""Security suite driven by the app's own route table, so a route added later is covered (or the
suite fails, asking for it to be listed): every route that names a conversation, message or batch
is a 404 for another user, leaking nothing; admin routes refuse users; nothing answers without a
key but the documented public routes; keys are stored only hashed.
"""
from __future__ import annotations

import json
import re

import pytest

from tests.conftest import auth
from tests.test_rest import assert_error, create_conv, send

#: routes anyone may call (DESIGN.md section 5)
PUBLIC = {"/", "/healthz", "/readyz", "/metrics", "/-/plugins", "/openapi.json", "/ws", "/static/<path:filename>"}
SECRET = "secret plans for the heist"
PARAM = re.compile(r"<(?:[a-z_]+:)?([a-z_]+)>")
#: route parameters that name shared things, not a user's (persona names)
SHARED_PARAMS = {"name"}


def api_rules(app):
    for rule in app.url_map.iter_rules():
        methods = sorted(m for m in rule.methods if m not in ("HEAD", "OPTIONS"))
        yield rule, methods


@pytest.fixture()
def owned(client, user_key, worker, ext):
    """The owner's resources, by the route parameter names that name them."""
    conv = create_conv(client, user_key, title=SECRET)
    r = send(client, user_key, conv["id"], SECRET, wait=True)
    ids = {"cid": conv["id"], "mid": r.json["message_id"]}
    b = client.post("/api/v1/batch", json={"prompts": [SECRET]}, headers=auth(user_key))
    assert b.status_code == 202, b.json
    ids["bid"] = b.json["id"]
    return ids


def fill(rule: str, ids: dict[str, str]) -> str:
    def sub(match: re.Match) -> str:
        name = match.group(1)
        assert name in ids, f"route {rule} has a parameter <{name}> this suite does not know: add it to `owned`"
        return ids[name]

    return PARAM.sub(sub, rule)


def test_every_route_naming_a_resource_is_404_for_another_user(client, owned, other_key, user_key, ext):
    checked = 0
    for rule, methods in api_rules(client.application):
        names = set(PARAM.findall(rule.rule))
        if not names - SHARED_PARAMS or rule.rule in PUBLIC or "/admin/" in rule.rule:
            continue
        path = fill(rule.rule, owned)
        for method in methods:
            r = client.open(path, method=method, json={}, headers=auth(other_key))
            err = assert_error(r, 404)
            assert SECRET not in json.dumps(err) and SECRET not in r.get_data(as_text=True)
            checked += 1
    assert checked >= 11, checked  # the suite really walked the routes
    # the owner's data came through untouched (the other user's DELETE and PATCH did nothing)
    conv = client.get(f"/api/v1/conversations/{owned['cid']}", headers=auth(user_key)).json
    assert conv["title"] == SECRET and conv["message_count"] == 2
    assert conv["messages"][1]["state"] == "done" and "feedback" not in conv["messages"][1]


def test_every_api_route_needs_a_key(client, owned):
    for rule, methods in api_rules(client.application):
        if rule.rule in PUBLIC or not rule.rule.startswith("/api/"):
            continue
        path = fill(rule.rule, {**owned, "name": "assistant", "user_id": "u_nobody"})
        for method in methods:
            for headers in ({}, auth("not-a-real-key"), {"Authorization": "Basic abc"}):
                assert_error(client.open(path, method=method, json={}, headers=headers), 401, "unauthorized")


def test_admin_routes_refuse_users_and_answer_admins(client, ext, user_key):
    admin_key = ext.users.create("root-admin", admin=True)[1]
    admin_rules = [(rule, methods) for rule, methods in api_rules(client.application) if "/admin/" in rule.rule]
    assert admin_rules, "no admin routes found"
    for rule, methods in admin_rules:
        path = PARAM.sub("u_nobody", rule.rule)
        for method in methods:
            assert_error(client.open(path, method=method, json={}, headers=auth(user_key)), 403, "admin_only")
            if method == "GET":
                r = client.open(path, method=method, headers=auth(admin_key))
                # 502 is fair for the reconcile report when no emulator runs here; a crash is not
                assert r.status_code != 500 and (r.status_code < 400 or "error" in r.json), path


def test_public_routes_are_exactly_the_documented_ones(client):
    unauthenticated = set()
    for rule, methods in api_rules(client.application):
        if "GET" not in methods or PARAM.search(rule.rule) and rule.rule not in PUBLIC:
            continue
        r = client.get(rule.rule)
        if r.status_code not in (401, 404, 405):
            unauthenticated.add(rule.rule)
    assert unauthenticated <= PUBLIC, unauthenticated - PUBLIC


def test_keys_are_only_stored_hashed(ext, user_key, client, worker):
    create_conv(client, user_key)
    for key in ext.redis.scan_iter(f"{ext.prefix}*", count=1000):
        assert user_key not in key
        kind = ext.redis.type(key)
        if kind == "string":
            assert user_key not in (ext.redis.get(key) or "")
        elif kind == "hash":
            assert user_key not in json.dumps(ext.redis.hgetall(key))
