"""The request being handled: its ID and what it was about, for logs, errors and traces.

`RequestMiddleware` (service/middleware.py) opens a `RequestContext` for each
HTTP request and keeps it in a context variable, so whatever runs for that
request sees it: the error handlers (the ID goes into every error body), the
log records (service/logs.py), the decode pool (its threads run in a copy of
the request's context) and the batcher (each queued job carries its request's
ID, and the batch's log line names them all).

The ID is the caller's ``X-Request-ID`` when it is safe to repeat (`valid_id`),
else a new one; either way it comes back in the response's ``X-Request-ID``.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

REQUEST_ID_HEADER = "x-request-id"
# Probes and scrapes, every few seconds from each orchestrator and Prometheus: their
# access lines are DEBUG (so that an INFO log shows the traffic that matters) and they
# are not traced.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live",
                          "/v2/health/ready"})
MAX_ID_LENGTH = 128
# Letters, digits and a few separators: safe in a header, a log line and a URL.
_SAFE_ID = re.compile(rf"[A-Za-z0-9._:@+=/-]{{1,{MAX_ID_LENGTH}}}")


@dataclass
class RequestContext:
    """One request: its ID and, once known, the model that answered it."""

    request_id: str
    model: str | None = None
    version: str | None = None
    images: int = 0


_current: ContextVar[RequestContext | None] = ContextVar("ocellus_request", default=None)


def valid_id(value: str | None) -> str | None:
    """The caller's request ID if it is safe to repeat (bounded, safe characters)."""
    if value is not None and _SAFE_ID.fullmatch(value):
        return value
    return None


def new_id() -> str:
    return uuid.uuid4().hex


def current() -> RequestContext | None:
    """The request being handled by this task or thread, if any."""
    return _current.get()


def current_id() -> str | None:
    ctx = _current.get()
    return ctx.request_id if ctx is not None else None


def enter(ctx: RequestContext) -> Any:
    """Make `ctx` current; returns the token for `leave`."""
    return _current.set(ctx)


def leave(token: Any) -> None:
    _current.reset(token)
