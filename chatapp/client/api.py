"""The REST side of the client: one ``requests`` session, a timeout on every request, and every
failure turned into an :class:`ApiError` carrying the server's canonical ``{"error": {...}}``."""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import requests

DEFAULT_URL = "http://127.0.0.1:8000"  # where python -m chatapp and the Procfile listen by default
DEFAULT_TIMEOUT_S = 30.0


class ApiError(Exception):
    """A refused request, a failed reply or an unreachable server, as code + message."""

    def __init__(self, code: str, message: str, status: int | None = None,
                 details: dict[str, Any] | None = None, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.details = details or {}
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, resp: requests.Response) -> "ApiError":
        """An HTTP error answer as an :class:`ApiError`."""
        return cls.from_body(resp.status_code, resp.content, resp.headers.get("Retry-After"))

    @classmethod
    def from_body(cls, status: int, body: bytes, retry_after: str | None = None) -> "ApiError":
        """Read the canonical error body; fall back to the status for a non-chatapp answer
        (e.g. a proxy's HTML 502 page)."""
        try:
            err = json.loads(body)["error"]
            code, message, details = str(err["code"]), str(err["message"]), err.get("details") or {}
        except (ValueError, KeyError, TypeError):
            code, message, details = f"http_{status}", f"The server answered HTTP {status}.", {}
        return cls(code, message, status, details, retry_after)


def connection_error(url: str, exc: Exception) -> ApiError:
    """A message that names the URL and says what to check, not a urllib3 traceback."""
    if isinstance(exc, requests.Timeout) or "timed out" in str(exc).lower():
        return ApiError("timeout", f"{url} did not answer in time; check the server or raise --timeout.")
    return ApiError("connection_failed", f"Cannot connect to {url}; is the server running there? "
                                         "Set --url or CHATAPP_URL to point elsewhere.")


class ApiClient:
    """Calls ``/api/v1`` with the user's key. The key is only ever sent in a header."""

    def __init__(self, base_url: str, key: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"
        self.session.headers["User-Agent"] = "chatapp-cli"

    @property
    def ws_url(self) -> str:
        """``/ws`` on the same server: http→ws, https→wss, keeping any path prefix."""
        scheme, rest = self.base_url.split("://", 1) if "://" in self.base_url else ("http", self.base_url)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send one request; any answer of 400 or more raises :class:`ApiError`."""
        kwargs.setdefault("timeout", self.timeout)
        try:
            resp = self.session.request(method, self.base_url + path, **kwargs)
        except requests.RequestException as exc:
            raise connection_error(self.base_url, exc) from None
        if resp.status_code >= 400:
            raise ApiError.from_response(resp)
        return resp

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """``request`` and decode the JSON body."""
        resp = self.request(method, path, **kwargs)
        try:
            return resp.json()
        except ValueError:
            raise ApiError("bad_response", f"{method} {path} did not answer JSON.", resp.status_code) from None

    # -- the routes the client uses ----------------------------------------------------------------
    def conversations(self, limit: int = 20) -> list[dict[str, Any]]:
        """The caller's conversations, most recent activity first."""
        return self.json("GET", "/api/v1/conversations", params={"limit": limit})["items"]

    def conversation(self, cid: str) -> dict[str, Any]:
        """One conversation (with its first page of messages)."""
        return self.json("GET", f"/api/v1/conversations/{quote(cid, safe='')}")

    def messages(self, cid: str, limit: int = 6) -> list[dict[str, Any]]:
        """The last ``limit`` messages of a conversation, oldest first."""
        return self.json("GET", f"/api/v1/conversations/{quote(cid, safe='')}/messages",
                         params={"limit": limit})["items"]

    def personas(self) -> dict[str, Any]:
        """``{"items": [...], "default": name}``."""
        return self.json("GET", "/api/v1/personas")

    def persona(self, name: str) -> dict[str, Any]:
        """One persona; ``persona_not_found`` when there is none by that name."""
        return self.json("GET", f"/api/v1/personas/{quote(name, safe='')}")

    def usage(self) -> dict[str, Any]:
        """The caller's usage report (``GET /api/v1/usage``)."""
        return self.json("GET", "/api/v1/usage")

    def export(self, cid: str, fmt: str) -> bytes:
        """A conversation exported as ``json``, ``md`` or ``csv``: the raw bytes."""
        return self.request("GET", f"/api/v1/conversations/{quote(cid, safe='')}/export",
                            params={"format": fmt}).content

    def create_batch(self, prompts: list[str], persona: str | None = None) -> dict[str, Any]:
        """Start a batch: ``{id, total}``."""
        body: dict[str, Any] = {"prompts": prompts}
        if persona:
            body["persona"] = persona
        return self.json("POST", "/api/v1/batch", json=body)

    def batch(self, batch_id: str) -> dict[str, Any]:
        """A batch's progress, answers and costs."""
        return self.json("GET", f"/api/v1/batch/{quote(batch_id, safe='')}")
