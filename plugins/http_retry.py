"""HTTP plumbing shared by the provider plugins: per-thread sessions, bounded retries with full
jitter and ``Retry-After``, and translation of HTTP failures into ``chatapp.errors``.

The retry rule that matters most: a request that is not safe to repeat (RunPod ``/run`` creates a
billable job) is retried only when it surely never reached the server (connect errors) or was
refused without being acted on (429). Everything here is thread-safe; many generations run
concurrently in one worker process.
"""
from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import requests
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

from chatapp.errors import (
    ChatAppError,
    InvalidRequest,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class Interrupted(Exception):
    """The caller's stop event was set while a request waited to be retried."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry: exponential backoff with full jitter, capped."""

    max_attempts: int = 5
    base_delay: float = 0.25
    max_delay: float = 8.0
    #: a longer Retry-After than this is cut down to it (we would rather fail than hang)
    max_retry_after: float = 30.0

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** (retry - 1)))
        wait = random.uniform(0.0, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait


def parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header (delta seconds or an HTTP date) in seconds, or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ThreadSessions:
    """One ``requests.Session`` per thread: sessions are not thread-safe, connections are pooled."""

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self._local = threading.local()
        self._headers = dict(headers or {})

    def get(self) -> requests.Session:
        """This thread's session, created on first use."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(self._headers)
            self._local.session = session
        return session


def surely_not_sent(exc: BaseException) -> bool:
    """True when the request never reached the server: the connection itself failed."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError) and exc.args:
        inner = exc.args[0]
        reason = inner.reason if isinstance(inner, MaxRetryError) else inner
        return isinstance(reason, (NewConnectionError, ConnectTimeoutError))
    return False


@dataclass
class Sent:
    """A response, plus whether an earlier failed attempt may have been acted on by the server."""

    response: requests.Response
    attempts: int
    maybe_processed: bool = False


@dataclass
class Target:
    """Who we talk to, for error messages: never holds anything secret but the key to scrub."""

    service: str  # "RunPod"
    key_var: str  # "RUNPOD_API_KEY"
    url_var: str  # "RUNPOD_BASE_URL"
    secret: str = ""

    def scrub(self, text: str) -> str:
        """``text`` with the API key masked, in case a server echoes it back."""
        return text.replace(self.secret, "***") if self.secret else text


def send(
    do: Callable[[], requests.Response],
    *,
    target: Target,
    what: str,
    policy: RetryPolicy,
    idempotent: bool,
    stop: threading.Event | None = None,
    deadline: float | None = None,
    on_attempt: Callable[[], None] | None = None,
) -> Sent:
    """Call ``do`` until it gives a non-retryable answer; return that response.

    Retries connect errors and 429 always; read errors and 5xx only when ``idempotent``. Waits
    are interruptible by ``stop`` (raises ``Interrupted``) and never run past ``deadline``
    (absolute ``time.time()``). Exhausted exceptions are raised as ``ProviderError`` subclasses;
    exhausted retryable statuses are returned for the caller to translate with ``check``.
    """
    maybe_processed = False
    attempt = 0
    while True:
        attempt += 1
        if on_attempt:
            on_attempt()
        retry_after = None
        try:
            response = do()
        except requests.RequestException as exc:
            unsent = surely_not_sent(exc)
            if not (unsent or idempotent) or attempt >= policy.max_attempts:
                raise _exception_error(exc, target, what, unsent, idempotent) from exc
            maybe_processed = maybe_processed or not unsent
            log.info("%s %s failed (%s); retrying", target.service, what, type(exc).__name__)
        else:
            status = response.status_code
            if status not in RETRY_STATUSES or (status != 429 and not idempotent):
                return Sent(response, attempt, maybe_processed)
            if attempt >= policy.max_attempts:
                return Sent(response, attempt, maybe_processed)
            maybe_processed = maybe_processed or status != 429
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            response.close()
            log.info("%s %s answered HTTP %s; retrying", target.service, what, status)
        delay = policy.delay(attempt, retry_after)
        if deadline is not None and time.time() + delay > deadline:
            raise ProviderTimeout(
                f"{target.service} {what} kept failing and the job's deadline is reached; "
                "try again later."
            )
        if stop is not None:
            if stop.wait(delay):
                raise Interrupted()
        else:
            time.sleep(delay)


def _exception_error(
    exc: requests.RequestException, target: Target, what: str, unsent: bool, idempotent: bool
) -> ChatAppError:
    detail = target.scrub(type(exc).__name__)
    if not idempotent and not unsent:
        return uncertain(target, what, detail)
    if isinstance(exc, requests.Timeout) and not unsent:
        return ProviderTimeout(f"{target.service} did not answer {what} in time ({detail}).")
    return ProviderUnavailable(
        f"Cannot reach {target.service} for {what} ({detail}); check {target.url_var} and the "
        "network, then try again."
    )


def uncertain(target: Target, what: str, detail: str) -> ProviderUnavailable:
    """The error for a non-repeatable request that failed after it may have been acted on.

    Marked not retryable, so the host does not repeat it either (a repeat of RunPod ``/run``
    could start a duplicate, billed job).
    """
    err = ProviderUnavailable(
        f"{target.service} {what} failed after the request was sent ({detail}); it may or may "
        "not have been acted on, so it is not repeated automatically (a repeat could start a "
        "duplicate, billed job). Check the provider's console, then try again."
    )
    err.retryable = False
    return err


def body_detail(response: requests.Response, target: Target, limit: int = 300) -> str:
    """The server's own error message from a response body (JSON ``error``/``message`` or text)."""
    text = response.text or ""
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error") or data.get("message") or data.get("detail")
        if isinstance(err, dict):
            err = err.get("message") or err
        if err:
            text = err if isinstance(err, str) else json.dumps(err)
    return target.scrub(" ".join(text.split()))[:limit]


def check(response: requests.Response, *, target: Target, what: str, not_found: str = "") -> None:
    """Raise the matching ``chatapp.errors`` exception for a failed response; pass a good one."""
    status = response.status_code
    if status < 400:
        return
    detail = body_detail(response, target)
    suffix = f": {detail}" if detail else ""
    details = {"provider_status": status}
    if status in (401, 403):
        raise ProviderAuthError(
            f"{target.service} refused our credentials for {what} (HTTP {status}); check "
            f"{target.key_var}.",
            details=details,
        )
    if status == 404:
        raise ProviderError(not_found or f"{target.service} answered 404 for {what}{suffix}.",
                            details=details)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is not None:
            details["retry_after"] = retry_after
        raise ProviderRateLimited(
            f"{target.service} is rate limiting us ({what}, HTTP 429); try again in a few seconds.",
            details=details,
        )
    if status >= 500:
        raise ProviderUnavailable(
            f"{target.service} failed {what} (HTTP {status}){suffix}; try again later.",
            details=details,
        )
    if status in (400, 413, 422):
        raise InvalidRequest(
            f"{target.service} rejected {what} (HTTP {status}){suffix}.", details=details
        )
    raise ProviderError(f"{target.service} answered HTTP {status} to {what}{suffix}.",
                        details=details)
