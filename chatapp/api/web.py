"""The web chat page: ``/`` serves chatapp/static/index.html; ``/static/...`` is Flask's own
static route for the same folder. Both need no key (the page signs in with the user's key in
the browser) and leave with a strict Content-Security-Policy: nothing inline, nothing from
another origin, so text from a model or a user cannot run as script even if it reached the DOM.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request, send_from_directory

bp = Blueprint("web", __name__)

CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",
    "font-src 'self'",
    "connect-src 'self' ws: wss:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",  # revalidate (ETag), so a deploy's new page and scripts are used at once
}


@bp.get("/")
def index() -> Any:
    return send_from_directory(current_app.static_folder, "index.html", mimetype="text/html")


@bp.after_app_request
def page_headers(response: Any) -> Any:
    if request.path == "/" or request.path.startswith(f"{current_app.static_url_path}/"):
        for name, value in PAGE_HEADERS.items():
            response.headers[name] = value
    return response
