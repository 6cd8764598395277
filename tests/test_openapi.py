"""GET /openapi.json: a valid OpenAPI 3.1 document generated from the app's routes and schemas."""
from __future__ import annotations

import warnings

from flask import Blueprint, jsonify
from marshmallow import fields
from openapi_spec_validator import validate

from chatapp.api.errors import json_body
from chatapp.openapi import openapi_path
from chatapp.schemas import Base, load
from tests.conftest import close_app, make_app

METHODS = ("get", "post", "put", "patch", "delete")


def spec_of(client):
    r = client.get("/openapi.json")  # no key needed
    assert r.status_code == 200 and r.is_json
    return r.json


def test_the_document_is_valid_openapi_3_1(client):
    spec = spec_of(client)
    assert spec["openapi"].startswith("3.1")
    validate(spec)  # raises with the first problem


def test_every_api_rule_appears_with_its_methods(app, client):
    spec = spec_of(client)
    rules = [r for r in app.url_map.iter_rules() if r.rule.startswith("/api/v1/")]
    assert len(rules) > 10
    for rule in rules:
        path, _ = openapi_path(rule.rule)
        assert path in spec["paths"], rule.rule
        for method in (m.lower() for m in rule.methods if m.lower() in METHODS):
            assert method in spec["paths"][path], (rule.rule, method)
    assert "/ws" not in spec["paths"] and "/static/{filename}" not in spec["paths"]
    for open_route in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert open_route in spec["paths"]


def test_security_scheme_and_which_routes_need_a_key(client):
    spec = spec_of(client)
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "An API key: Authorization: Bearer <key>."}
    assert spec["security"] == [{"bearer": []}]
    chat = spec["paths"]["/api/v1/chat"]["post"]
    assert "security" not in chat  # inherits the bearer requirement
    assert chat["responses"]["401"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    assert spec["paths"]["/metrics"]["get"]["security"] == [{}, {"bearer": []}]  # METRICS_TOKEN, if set


def test_bodies_come_from_the_marshmallow_schemas_and_errors_share_one_schema(client):
    spec = spec_of(client)
    schemas = spec["components"]["schemas"]
    send = spec["paths"]["/api/v1/conversations/{cid}/messages"]["post"]
    assert send["requestBody"]["required"] is True
    assert send["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/MessageCreate"}
    body = schemas["MessageCreate"]
    assert body["required"] == ["content"] and body["additionalProperties"] is False  # unknown fields: 400
    assert body["properties"]["params"] == {"$ref": "#/components/schemas/Params"}
    assert schemas["Params"]["properties"]["cache"]["enum"] == ["use", "refresh", "skip"]
    assert schemas["Chat"]["properties"]["conversation_id"]["type"] == ["string", "null"]
    create = spec["paths"]["/api/v1/conversations"]["post"]["requestBody"]
    assert create["required"] is False  # every field is optional
    assert schemas["Error"]["properties"]["error"]["required"] == ["code", "message"]
    assert send["responses"]["4XX"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert {"name": "cid", "in": "path", "required": True, "schema": {"type": "string"}} in send["parameters"]
    assert any(p["name"] == "wait" and p["in"] == "query" for p in send["parameters"])
    message = spec["paths"]["/api/v1/conversations/{cid}/messages/{mid}"]["get"]
    assert [p["name"] for p in message["parameters"]] == ["cid", "mid"]
    assert "requestBody" not in message
    ids = [op["operationId"] for ops in spec["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


class NoteSchema(Base):
    text = fields.String(required=True)
    stars = fields.Integer(strict=True)


class ChatSchema(Base):  # the same class name as chatapp.schemas.ChatSchema
    topic = fields.String()


def test_a_route_added_later_appears_by_itself(app_config):
    """A plugin's (or a colleague's) new blueprint: its rule, path params and body schema."""
    bp = Blueprint("notes", __name__)

    @bp.post("/api/v1/notes/<int:nid>")
    def add_note(nid: int):
        """Attach a note.

        Longer text for the description."""
        return jsonify(load(NoteSchema(), json_body())), 201

    @bp.post("/api/v1/notes/other")
    def other_chat():
        return jsonify(load(ChatSchema(), json_body()))

    app = make_app(app_config)
    try:
        app.register_blueprint(bp)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Multiple schemas resolved")  # apispec numbered one
            spec = spec_of(app.test_client())
        validate(spec)
        op = spec["paths"]["/api/v1/notes/{nid}"]["post"]
        assert op["summary"] == "Attach a note." and "Longer text" in op["description"]
        assert op["operationId"] == "notes.add_note" and op["tags"] == ["notes"]
        assert op["parameters"] == [{"name": "nid", "in": "path", "required": True, "schema": {"type": "integer"}}]
        assert op["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Note"}
        assert spec["components"]["schemas"]["Note"]["required"] == ["text"]
        # a schema class named like one of ours gets its own component, not ours
        other = spec["paths"]["/api/v1/notes/other"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert other["$ref"] != "#/components/schemas/Chat"
        assert "topic" in spec["components"]["schemas"][other["$ref"].rsplit("/", 1)[1]]["properties"]
    finally:
        close_app(app)
