"""Optional API keys for the ``/v1/`` and ``/v2/models/`` routes, and the admin token of
the admin API.

Secrets are compared with `hmac.compare_digest`, in constant time. A refusal
is a 401 JSON error (no or malformed credentials) or a 403 (wrong admin
token, or the admin API is off), counted as ``rejected{reason="unauthorized"}``.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import error_response
from service.metrics import Metrics
from service.settings import Settings

_ADMIN_ACTION = re.compile(r"^/v1/models/[^/]+/(reload|rollback)$")


def _matches(given: str, secrets: list[str]) -> bool:
    # Check every secret, so the time taken does not tell which one (or whether any) matched.
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(given.encode(), secret.encode())
    return found


def bearer_token(headers: dict[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, else ``X-API-Key``'s value."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None


class ApiKeyMiddleware:
    """Requires one of `keys` on every ``/v1/`` route except the admin actions, and on
    the Open Inference Protocol's model routes (``/v2/models/...``; its server
    metadata and health probes stay open, as ``/healthz`` and ``/readyz`` do).

    The admin actions (``POST /v1/models/{name}/reload|rollback``) check the
    admin token themselves; the admin token is accepted here as a key too.
    """

    def __init__(self, app: ASGIApp, keys: list[str], metrics: Metrics) -> None:
        self.app = app
        self.keys = keys
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if (not self.keys or not path.startswith(("/v1/", "/v2/models/"))
                or _ADMIN_ACTION.match(path)):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", ())}
        token = bearer_token(headers)
        if token is not None and _matches(token, self.keys):
            await self.app(scope, receive, send)
            return
        self.metrics.rejected.labels("unauthorized").inc()
        message = ("missing API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`"
                   if token is None else "invalid API key")
        response = error_response(401, "unauthorized", message,
                                  headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def api_keys_of(settings: Settings) -> list[str]:
    """The accepted API keys: the configured ones plus the admin token (if any keys are set)."""
    keys = [k.get_secret_value() for k in settings.api_keys]
    if keys and settings.admin_token is not None:
        keys.append(settings.admin_token.get_secret_value())
    return keys


def admin_refusal(settings: Settings, headers: Mapping[str, str]) -> HTTPException | None:
    """Why a request may not act as admin, or None when it carries the admin token.

    The refusal is 403 while the admin API is off (no token set, or a blank one)
    or for a wrong token, 401 when no ``Authorization: Bearer TOKEN`` was sent.
    The routes take it through `service.deps` (`require_admin`, `IsAdminDep`).
    """
    if settings.admin_token is None:
        return HTTPException(403, "the admin API is off: set OCELLUS_ADMIN_TOKEN to enable it")
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return HTTPException(401, "missing admin token: send `Authorization: Bearer TOKEN`",
                             headers={"WWW-Authenticate": "Bearer"})
    if not _matches(token.strip(), [settings.admin_token.get_secret_value()]):
        return HTTPException(403, "invalid admin token")
    return None
