"""The one error hierarchy. Every error a client sees is a ``ChatAppError`` rendered as

    {"error": {"code": "snake_case", "message": "...", "details": {...}}}

in an HTTP body, a websocket ``error`` frame, or a failed message record. Providers translate
their own exceptions into ``ProviderError`` subclasses with ``raise ... from exc``.
"""
from __future__ import annotations

from typing import Any


class ChatAppError(Exception):
    """Base class: an HTTP status, a stable snake_case code and a message that says what to do."""

    status = 500
    code = "internal_error"
    message = "Something went wrong on our side; try again."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.message
        self.code = code or self.code
        self.status = status or self.status
        self.details = details or {}
        self.headers = headers or {}
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        """The canonical error body."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class InvalidRequest(ChatAppError):
    status, code, message = 400, "invalid_request", "The request is not valid."


class Unauthorized(ChatAppError):
    status, code = 401, "unauthorized"
    message = "Send a valid API key as 'Authorization: Bearer <key>'."


class Forbidden(ChatAppError):
    status, code, message = 403, "forbidden", "You may not do this."


class NotFound(ChatAppError):
    status, code, message = 404, "not_found", "No such resource."


class Conflict(ChatAppError):
    status, code, message = 409, "conflict", "The request conflicts with the current state."


class BudgetExhausted(ChatAppError):
    status, code, message = 402, "budget_exhausted", "Your spending limit is reached."


class TooLarge(ChatAppError):
    status, code, message = 413, "too_large", "The request is too large."


class RateLimited(ChatAppError):
    status, code, message = 429, "rate_limited", "Too many requests; retry later."

    def __init__(self, message: str | None = None, *, retry_after: int = 1, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", str(max(1, int(retry_after))))
        self.details.setdefault("retry_after", max(1, int(retry_after)))


class Unavailable(ChatAppError):
    status, code = 503, "unavailable"
    message = "The service is briefly unavailable (storage unreachable); retry in a few seconds."


class ProviderError(ChatAppError):
    """The model provider failed. Subclasses say how; ``retryable`` tells the caller."""

    status, code, message = 502, "provider_error", "The model provider failed."
    retryable = False


class ProviderUnavailable(ProviderError):
    code, message, retryable = "provider_unavailable", "The model provider is unreachable.", True


class ProviderRateLimited(ProviderError):
    code, message, retryable = "provider_rate_limited", "The model provider is rate limiting us.", True


class ProviderAuthError(ProviderError):
    code, message = "provider_auth_failed", "The model provider refused our credentials."


class ProviderTimeout(ProviderError):
    status, code, message = 504, "provider_timeout", "The model provider did not answer in time."


class GenerationLost(ChatAppError):
    """The worker running a reply died and the reply could not be resumed."""

    status, code = 500, "worker_lost"
    message = "The worker generating this reply stopped; regenerate the reply to try again."


#: codes raised with an explicit ``code=`` whose class alone would not say the status
_EXTRA_STATUS = {"job_timeout": 504, "reply_timeout": 504}


def status_for_code(code: str, default: int = 502) -> int:
    """The HTTP status for a stored error code (a failed reply keeps only its code).

    Failures of the generation itself are gateway errors: 504 for timeouts, else 502.
    """
    if code in _EXTRA_STATUS:
        return _EXTRA_STATUS[code]
    pending = list(ChatAppError.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls.code == code:
            return cls.status if cls.status < 500 or cls.status == 504 else default
        pending.extend(cls.__subclasses__())
    return default
