"""``GET /openapi.json``: an OpenAPI 3.1 description of the REST API, generated from the app itself.

Paths come from walking ``app.url_map`` (every rule under ``/api/``, including plugins'
blueprints, plus the operational routes), so a new route appears without touching this module.
A route's request body is the marshmallow schema (``chatapp.schemas``) its view function names,
converted by apispec's marshmallow plugin; path parameters come from the rule; the summary is the
view's docstring. Errors share the canonical error schema; ``/api/`` routes need the bearer key.
"""
from __future__ import annotations

import inspect
import re
from typing import Any, Callable

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from marshmallow import Schema
from werkzeug.routing import Rule

BODY_METHODS = frozenset({"post", "put", "patch"})
METHOD_ORDER = ("get", "post", "put", "patch", "delete")
#: routes that need no key (DESIGN.md section 5)
OPEN_BLUEPRINTS = frozenset({"meta"})
_PARAM = re.compile(r"<(?:(?P<converter>[a-zA-Z_][a-zA-Z0-9_]*)(?:\((?P<args>[^)]*)\))?:)?(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>")
CONVERTER_SCHEMAS: dict[str, dict[str, Any]] = {
    "int": {"type": "integer"}, "float": {"type": "number"}, "uuid": {"type": "string", "format": "uuid"},
}

#: query parameters the routes document (DESIGN.md section 5); keyed by path with "{}" for parameters
_LIMIT = {"name": "limit", "schema": {"type": "integer", "minimum": 1}, "description": "Page size."}
_DAYS = {"name": "days", "schema": {"type": "integer", "minimum": 1, "maximum": 366},
         "description": "Days back (default 30)."}
QUERY_PARAMETERS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("/api/v1/conversations", "get"): [
        _LIMIT, {"name": "cursor", "schema": {"type": "string"}, "description": "next_cursor of the previous page."},
        {"name": "q", "schema": {"type": "string"}, "description": "Search titles and message text."}],
    ("/api/v1/conversations/{}/messages", "get"): [
        _LIMIT, {"name": "before", "schema": {"type": "string"}, "description": "next_cursor of the previous page."}],
    ("/api/v1/conversations/{}/messages", "post"): [
        {"name": "wait", "schema": {"type": "boolean"}, "description": "Answer 200 with the finished reply."}],
    ("/api/v1/conversations/{}/export", "get"): [
        {"name": "format", "schema": {"type": "string", "enum": ["json", "md", "csv"]}}],
    ("/api/v1/usage", "get"): [_DAYS, {"name": "format", "schema": {"type": "string", "enum": ["json", "csv"]}}],
    ("/api/v1/admin/usage", "get"): [_DAYS],
    ("/api/v1/admin/usage/messages.csv", "get"): [_DAYS],
}

#: routes whose success is not (only) JSON: downloads and the Prometheus exposition
_TEXT = {"type": "string"}
SUCCESS_CONTENT: dict[tuple[str, str], dict[str, Any]] = {
    ("/api/v1/conversations/{}/export", "get"): {
        "application/json": {"schema": {}}, "text/markdown": {"schema": _TEXT}, "text/csv": {"schema": _TEXT}},
    ("/api/v1/usage", "get"): {"application/json": {"schema": {}}, "text/csv": {"schema": _TEXT}},
    ("/api/v1/admin/usage/messages.csv", "get"): {"text/csv": {"schema": _TEXT}},
    ("/metrics", "get"): {"text/plain": {"schema": _TEXT}},
}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string", "description": "Stable snake_case code.", "examples": ["validation_error"]},
            "message": {"type": "string", "description": "What happened and what to do."},
            "details": {"type": "object"},
        },
    }},
}
ERROR = {"$ref": "#/components/schemas/Error"}


def body_schema(view: Callable[..., Any]) -> type[Schema] | None:
    """The first marshmallow schema class the view function's code names (``load(XSchema(), ...)``)."""
    function = inspect.unwrap(view)
    code, names = getattr(function, "__code__", None), getattr(function, "__globals__", {})
    for name in code.co_names if code is not None else ():
        found = names.get(name)
        if isinstance(found, type) and issubclass(found, Schema):
            return found
    return None


def openapi_path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    """``/c/<cid>/m/<int:n>`` -> ``/c/{cid}/m/{n}`` and its path parameters."""
    params = [{"name": m["name"], "in": "path", "required": True,
               "schema": dict(CONVERTER_SCHEMAS.get(m["converter"] or "", {"type": "string"}))}
              for m in _PARAM.finditer(rule)]
    return _PARAM.sub(lambda m: "{" + m["name"] + "}", rule), params


def included(rule: Rule) -> bool:
    """REST routes (``/api/...``) and the operational ones; not static files, the page or ``/ws``."""
    return rule.rule.startswith("/api/") or rule.endpoint.split(".")[0] in OPEN_BLUEPRINTS


def _operation(app: Flask, rule: Rule, method: str, path_params: list[dict[str, Any]]) -> dict[str, Any]:
    view = app.view_functions[rule.endpoint]
    doc = inspect.getdoc(inspect.unwrap(view)) or ""
    blueprint = rule.endpoint.split(".")[0] if "." in rule.endpoint else "app"
    authed = blueprint not in OPEN_BLUEPRINTS
    key = (_PARAM.sub("{}", rule.rule), method)
    success = SUCCESS_CONTENT.get(key, {"application/json": {"schema": {}}})
    op: dict[str, Any] = {
        "operationId": f"{rule.endpoint}.{method}" if len(_methods(rule)) > 1 else rule.endpoint,
        "summary": doc.splitlines()[0] if doc else rule.endpoint.rsplit(".", 1)[-1].replace("_", " "),
        "tags": [blueprint],
        "responses": {
            ("204" if method == "delete" else "2XX"): {"description": "Success."} if method == "delete" else {
                "description": "Success.", "content": success},
            "4XX": {"description": "Invalid request, unknown id, limits (canonical error body).",
                    "content": {"application/json": {"schema": ERROR}}},
            "5XX": {"description": "Redis or provider unavailable (canonical error body).",
                    "content": {"application/json": {"schema": ERROR}}},
        },
    }
    if len(doc.splitlines()) > 1:
        op["description"] = doc
    if authed:
        op["responses"]["401"] = {"description": "Missing or invalid API key.",
                                  "content": {"application/json": {"schema": ERROR}}}
    else:
        # /metrics may require its own token (CHATAPP_METRICS_TOKEN); the rest need none
        op["security"] = [{}, {"bearer": []}] if rule.rule == "/metrics" else []
    query = [_with_config_bounds(app, q) for q in QUERY_PARAMETERS.get(key, [])]
    if path_params or query:
        op["parameters"] = [*path_params, *({"in": "query", **q} for q in query)]
    schema = body_schema(view) if method in BODY_METHODS else None
    if schema is not None:
        # the marshmallow plugin turns the class into a component and a $ref ("XSchema" -> "X",
        # numbered if two classes share a name)
        required = any(f.required for f in schema().fields.values())
        op["requestBody"] = {"required": required, "content": {"application/json": {"schema": schema}}}
    return op


def _with_config_bounds(app: Flask, param: dict[str, Any]) -> dict[str, Any]:
    """``limit`` is bounded by this app's MAX_PAGE_SIZE (beyond it: 400 invalid_limit)."""
    if param["name"] != "limit":
        return param
    return {**param, "schema": {**param["schema"], "maximum": int(app.config["MAX_PAGE_SIZE"])}}


def _methods(rule: Rule) -> list[str]:
    return [m for m in METHOD_ORDER if m.upper() in (rule.methods or ())]


def build_spec(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``app`` as it is now (its url_map, its plugins' routes)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        app_version = version("chatapp")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        app_version = "0"
    spec = APISpec(
        title="chatapp", version=app_version, openapi_version="3.1.0", plugins=[MarshmallowPlugin()],
        info={"description": "LLM chat backend: REST under /api/v1 (this document) and a websocket at /ws "
                             "(docs/api.md). Errors are always the Error schema."},
        servers=[{"url": "/"}],
        security=[{"bearer": []}],
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer",
                                               "description": "An API key: Authorization: Bearer <key>."})
    spec.components.schema("Error", ERROR_SCHEMA)
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not included(rule):
            continue
        path, params = openapi_path(rule.rule)
        for method in _methods(rule):
            operation = _operation(app, rule, method, params)
            paths.setdefault(path, {}).setdefault(method, operation)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()
