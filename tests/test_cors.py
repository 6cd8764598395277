"""CORS: off by default; an allowlist (CHATAPP_CORS_ORIGINS) answers preflights and adds headers."""
from __future__ import annotations

import pytest

from tests.conftest import auth, close_app, make_app

ALLOWED = "https://chat.example.com"
OTHER = "https://evil.example.net"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}


def cors_headers(response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


@pytest.fixture()
def cors_app(app_config):
    application = make_app({**app_config, "CORS_ORIGINS": f"{ALLOWED}, https://other-allowed.example.org/"})
    yield application
    close_app(application)


def test_off_by_default_no_headers_at_all(client, user_key):
    r = client.get("/api/v1/personas", headers={**auth(user_key), "Origin": ALLOWED})
    assert r.status_code == 200 and cors_headers(r) == {}
    r = client.options("/api/v1/conversations", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert cors_headers(r) == {}


def test_allowed_origin_preflight_is_answered_without_a_key(cors_app):
    r = cors_app.test_client().options("/api/v1/conversations", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert set(r.headers["Access-Control-Allow-Methods"].split(", ")) == {"GET", "POST"}
    allowed_headers = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed_headers
    assert int(r.headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in r.headers["Vary"]
    # a route with other methods says so
    r = cors_app.test_client().options("/api/v1/conversations/c_x", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert set(r.headers["Access-Control-Allow-Methods"].split(", ")) == {"GET", "PATCH", "DELETE"}
    # a trailing slash in the setting does not matter
    r = cors_app.test_client().options("/api/v1/chat", headers={"Origin": "https://other-allowed.example.org",
                                                                 **PREFLIGHT})
    assert r.status_code == 204 and r.headers["Access-Control-Allow-Origin"] == "https://other-allowed.example.org"


def test_allowed_origin_gets_headers_on_responses_and_errors(cors_app):
    key = cors_app.extensions["chatapp"].users.create("corsy")[1]
    client = cors_app.test_client()
    r = client.get("/api/v1/personas", headers={**auth(key), "Origin": ALLOWED})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "Retry-After" in r.headers["Access-Control-Expose-Headers"]
    assert "Access-Control-Allow-Credentials" not in r.headers  # bearer keys, no cookies
    r = client.get("/api/v1/personas", headers={"Origin": ALLOWED})  # 401: the page can read why
    assert r.status_code == 401 and r.headers["Access-Control-Allow-Origin"] == ALLOWED
    r = client.get("/openapi.json", headers={"Origin": ALLOWED})
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED


def test_other_origins_get_nothing(cors_app):
    key = cors_app.extensions["chatapp"].users.create("corsn")[1]
    client = cors_app.test_client()
    r = client.options("/api/v1/conversations", headers={"Origin": OTHER, **PREFLIGHT})
    assert r.status_code != 204 and cors_headers(r) == {}
    r = client.get("/api/v1/personas", headers={**auth(key), "Origin": OTHER})
    assert r.status_code == 200 and cors_headers(r) == {}
    assert "Origin" in r.headers["Vary"]  # caches keep the two origins' answers apart
    # outside /api/v1 nothing changes, allowed origin or not
    r = client.get("/healthz", headers={"Origin": ALLOWED})
    assert cors_headers(r) == {}


def test_unknown_route_preflight_is_not_answered(cors_app):
    r = cors_app.test_client().options("/api/v1/nothing-here", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert r.status_code == 404 and "Access-Control-Allow-Methods" not in r.headers


def test_star_allows_any_origin(app_config):
    application = make_app({**app_config, "CORS_ORIGINS": "*"})
    try:
        r = application.test_client().options("/api/v1/chat", headers={"Origin": OTHER, **PREFLIGHT})
        assert r.status_code == 204 and r.headers["Access-Control-Allow-Origin"] == "*"
    finally:
        close_app(application)
