"""The one error boundary: domain errors → HTTP status and one JSON shape.

``{"error": {"status": 415, "code": "unsupported_media_type", "message": "..."}}``.
Expected errors become 4xx; anything else is logged and returned as a plain 500.
Under ``/v2`` the Open Inference Protocol's shape, ``{"error": "..."}``, is given
instead (`v2_error`; `service.middleware.V2ErrorMiddleware` reshapes the errors
made before the route is reached).
"""

from __future__ import annotations

import errno
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from models.errors import (
    ImageDecodeError,
    ImageError,
    ImageTooLargeError,
    InferenceTimeoutError,
    ModelNotReadyError,
    ModelsLoadingError,
    OcellusError,
    RegistryError,
    RegistryLockedError,
    ServiceOverloadedError,
    TaskMismatchError,
    UnsupportedImageFormatError,
    VersionRefusedError,
)
from service import context

log = logging.getLogger(__name__)

# Most specific first.
_STATUS: list[tuple[type[Exception], int, str]] = [
    (ImageTooLargeError, 413, "too_large"),
    (UnsupportedImageFormatError, 415, "unsupported_media_type"),
    (ImageDecodeError, 400, "bad_image"),
    (TaskMismatchError, 400, "wrong_task"),
    (ModelNotReadyError, 404, "model_not_found"),
    (RegistryLockedError, 409, "locked"),
    (VersionRefusedError, 409, "version_refused"),
    (RegistryError, 409, "registry_conflict"),
    # Both are 503 + Retry-After: the fix for a client is the same (back off, retry).
    (InferenceTimeoutError, 503, "timeout"),
    (ModelsLoadingError, 503, "loading"),
    (ServiceOverloadedError, 503, "overloaded"),
]


class RequestError(OcellusError):
    """A malformed request that is not about an image (missing part, bad parameter)."""

    def __init__(self, message: str, *, status: int = 422, code: str = "invalid_request"):
        super().__init__(message)
        self.status = status
        self.code = code


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape, with the request's ID (service/context.py) for the caller to quote."""
    error: dict[str, object] = {"status": status, "code": code, "message": message}
    if (request_id := context.current_id()) is not None:
        error["request_id"] = request_id
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def is_v2(path: str) -> bool:
    """A path of the Open Inference Protocol's routes (service/routes/v2.py)."""
    return path == "/v2" or path.startswith("/v2/")


def v2_error(message: str, request_id: str | None = None) -> dict[str, str]:
    """The Open Inference Protocol's error body, with the request's ID beside it."""
    request_id = request_id or context.current_id()
    return {"error": message, **({"request_id": request_id} if request_id else {})}


def disconnected_response(when: str) -> JSONResponse:
    """499 for a client that has gone (as nginx logs it): nobody reads it, but the
    request metrics get a status."""
    return error_response(499, "client_disconnected", f"the client disconnected {when}")


def internal_error(method: str, path: str, exc: BaseException) -> JSONResponse:
    """Log an unexpected error with its traceback; a plain 500 that tells nothing of it.

    `service.middleware.RequestMiddleware` answers with it, inside the request's
    context (so with its ID), before Starlette's outermost handler would.
    """
    log.error("unhandled error on %s %s", method, path, exc_info=exc)
    if is_v2(path):  # answered outside V2ErrorMiddleware, so shaped here
        return JSONResponse(v2_error("internal server error"), status_code=500)
    return error_response(500, "internal_error", "internal server error")


def status_of(exc: Exception) -> tuple[int, str]:
    """The HTTP status and error code for a domain error."""
    if isinstance(exc, RequestError):
        return exc.status, exc.code
    for cls, status, code in _STATUS:
        if isinstance(exc, cls):
            return status, code
    return 400, "bad_request"


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        if err.get("type") == "missing":
            parts.append(f"missing {where}: expected a multipart/form-data part named "
                         f"'{where.split('.')[-1]}'" if "file" in where else f"missing {where}")
        else:
            parts.append(f"{where}: {err.get('msg')} (got {err.get('input')!r})")
    return "; ".join(parts) or "invalid request"


def _count_rejection(request: Request, reason: str, *, decode_failure: bool = False) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.rejected.labels(reason).inc()
        if decode_failure:
            metrics.decode_failures.labels(reason).inc()


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the same JSON shape."""

    @app.exception_handler(OcellusError)
    async def _domain(request: Request, exc: OcellusError) -> JSONResponse:
        status, code = status_of(exc)
        if isinstance(exc, ImageError):
            _count_rejection(request, exc.reason, decode_failure=True)
        elif status == 413:
            _count_rejection(request, "too_large")
        elif isinstance(exc, ServiceOverloadedError):
            _count_rejection(request, code if code in ("timeout", "loading") else "overload")
            return error_response(status, code, str(exc),
                                  headers={"Retry-After": str(exc.retry_after)})
        return error_response(status, code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413:  # a streamed body cut off at the limit
            _count_rejection(request, "too_large")
        code = {401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 413: "too_large"}.get(
            exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # Gone while uploading; nobody reads this, it gives the request metrics a status.
        _count_rejection(request, "disconnected")
        return disconnected_response("before its upload was complete")

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # A full disk (spooling an upload, writing the registry) is the server's
            # fault, not the request's: 507, so that clients and alerts say so.
            log.error("no space left on device on %s %s: %s", request.method,
                      request.url.path, exc)
            _count_rejection(request, "insufficient_storage")
            return error_response(507, "insufficient_storage",
                                  "the server has no disk space left to take this request; "
                                  "retry later", headers={"Retry-After": "60"})
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return internal_error(request.method, request.url.path, exc)
