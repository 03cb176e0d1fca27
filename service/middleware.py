"""Pure ASGI middleware: each request's ID, metrics and access line, the body-size
guard, the cap on inference requests in flight, dropping the work of a client that
has gone, and the Open Inference Protocol's error shape."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time

import anyio
from opentelemetry import trace
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.tasks import TASKS
from service import context
from service.context import QUIET_ROUTES, REQUEST_ID_HEADER
from service.errors import (
    disconnected_response,
    error_response,
    internal_error,
    is_v2,
    v2_error,
)
from service.metrics import Metrics
from service.tracing import trace_id

access_log = logging.getLogger("ocellus.access")

# Each task's route, as the task table names it: /v1/classify, /v1/detect; and the
# Open Inference Protocol's (service/routes/v2.py).
INFERENCE_PATHS = frozenset(task.route for task in TASKS.values())
V2_INFER = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")


def is_inference(scope: Scope) -> bool:
    """A request that decodes images and runs a model: POST to an inference route."""
    return (scope["type"] == "http" and scope["method"] == "POST"
            and (scope["path"] in INFERENCE_PATHS or V2_INFER.match(scope["path"]) is not None))


class V2ErrorMiddleware:
    """Gives the errors of ``/v2`` routes the protocol's shape, ``{"error": "message"}``.

    The service's one error shape (service/errors.py) is made everywhere, by the
    handlers and by the middleware outside the routes (413, 401, 503); here, for a
    ``/v2`` path, its message becomes the protocol's error. Status and headers
    (Retry-After) stay. An unhandled error's 500 is answered outside this
    middleware, and shaped by its handler.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_v2(scope["path"]):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def reshape(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message
                return
            if start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            try:
                error = json.loads(body)["error"]
                body = json.dumps(v2_error(error["message"], error.get("request_id"))).encode()
            except (ValueError, KeyError, TypeError):
                pass  # not the service's shape: as it is
            headers = [(k, v) for k, v in start.get("headers", ())
                       if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers,
                                             (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, reshape)


class RequestMiddleware:
    """The outermost layer: each request's ID, metrics and access line.

    It opens the request's `RequestContext` (service/context.py) with the caller's
    ``X-Request-ID`` or a new one, returns that ID on the response, counts and times
    the request by its route's template, and writes one access line (``event:
    "access"``: method, route, status, latency, and the model, version and image
    count when it ran one) with the ID. No header, query string or body is logged.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        headers = dict(scope.get("headers", ()))
        given = headers.get(REQUEST_ID_HEADER.encode())
        ctx = context.RequestContext(
            context.valid_id(given.decode("latin-1") if given else None) or context.new_id())
        token = context.enter(ctx)
        request_span = trace.get_current_span()  # the request's, when it is traced
        if request_span.is_recording():
            request_span.set_attribute("ocellus.request_id", ctx.request_id)

        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message = {**message, "headers": [
                    *(h for h in message.get("headers", ())
                      if h[0].lower() != REQUEST_ID_HEADER.encode()),
                    (REQUEST_ID_HEADER.encode(), ctx.request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if request_span.is_recording():
                request_span.record_exception(exc)
            # Here, not in Starlette's outermost handler, so that the log line and the
            # 500 have the ID. Once the answer has begun, nothing more can be sent: the
            # connection is closed with the answer cut short.
            response = internal_error(scope["method"], scope["path"], exc)
            if not started:
                await response(scope, receive, send_wrapper)
        except BaseException:  # cancelled (the server shutting down): logged as gone
            if not started:
                status = 499
            raise
        finally:
            try:
                self._account(scope, ctx, status, time.perf_counter() - start)
            finally:
                context.leave(token)

    def _account(self, scope: Scope, ctx: context.RequestContext, status: int,
                 seconds: float) -> None:
        """The request's metrics and its access line."""
        route = scope.get("route")
        # Unmatched paths share one label value so the label stays bounded.
        template = getattr(route, "path", None) or "unmatched"
        self.metrics.http_requests.labels(template, scope["method"], str(status)).inc()
        # A traced request's latency carries its trace ID: a Grafana panel can go from
        # a slow bucket to the trace (shown to scrapers that ask for OpenMetrics).
        tid = trace_id()
        self.metrics.http_duration.labels(template).observe(
            seconds, exemplar={"trace_id": tid} if tid else None)
        access_log.log(
            logging.DEBUG if template in QUIET_ROUTES else logging.INFO,
            "%s %s %d %.1f ms", scope["method"], template, status, seconds * 1000,
            extra={"event": "access", "method": scope["method"], "route": template,
                   "status": status, "latency_ms": round(seconds * 1000, 2),
                   **({"model": ctx.model, "version": ctx.version, "images": ctx.images}
                      if ctx.model else {})})


class BodySizeLimitMiddleware:
    """Refuses a request whose declared body is over `max_bytes` with 413, before reading it.

    Bodies without a Content-Length (chunked) are counted as they stream and
    cut off at the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def _reject(self, scope: Scope, receive: Receive, send: Send,
                      length: int | None) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels("too_large").inc()
        got = f"{length} bytes" if length is not None else "more"
        await error_response(413, "too_large", f"request body too large: the limit is "
                             f"{self.max_bytes} bytes, got {got}")(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(scope, receive, send, int(length))
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI re-raises HTTPExceptions from body parsing, so the
                    # service's error handler gives it the usual JSON shape.
                    raise HTTPException(413, f"request body too large: the limit is "
                                             f"{self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


class InFlightLimitMiddleware:
    """Answers 503 ``overloaded`` with Retry-After, before reading the body, to an
    inference request that would be one more than `max_in_flight` at once.

    Everything after admission (upload, decode, queue) is bounded by other limits;
    this one bounds how many requests hold memory and sockets at the same time. A
    place is freed when its answer has been sent, before the request's clean-up
    (closing its spooled upload files), so for a moment up to twice as many
    requests may still hold their uploads.
    Its count is the ``ocellus_requests_in_flight`` gauge.
    """

    def __init__(self, app: ASGIApp, max_in_flight: int, metrics: Metrics) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.metrics = metrics
        self.count = 0  # changed on the event loop's thread only, so no lock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_inference(scope):
            await self.app(scope, receive, send)
            return
        if self.count >= self.max_in_flight:
            self.metrics.rejected.labels("overload").inc()
            response = error_response(
                503, "overloaded", f"{self.count} inference requests are in flight and the "
                f"limit is {self.max_in_flight} (OCELLUS_MAX_IN_FLIGHT); retry later",
                headers={"Retry-After": "1"})
            await response(scope, receive, send)
            return
        self.count += 1
        self.metrics.in_flight.inc()
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self.count -= 1
                self.metrics.in_flight.dec()

        async def send_then_release(message: Message) -> None:
            await send(message)
            # Free once the answer is out: the client may send its next request at once
            # (keep-alive), before this request's own clean-up has run, and would find
            # its place still taken (measured: 12 and 16 of 300 back-to-back requests
            # refused at OCELLUS_MAX_IN_FLIGHT=1 when the place was freed after the app
            # returned).
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                release()

        try:
            await self.app(scope, receive, send_then_release)
        finally:
            release()


class CancelOnDisconnectMiddleware:
    """Stops work on an inference request whose client has gone.

    Once the body has been read, the app's next message would be ``http.disconnect``;
    a watcher waits for it and cancels the request's handling. Its images still in
    the decode pool's queue are never decoded, and the batcher drops them from its
    queue (a forward already running finishes). Counted as
    ``rejected{reason="disconnected"}`` and logged with status 499, as nginx does.
    A client gone while still uploading is caught by the body's reader instead
    (`starlette.requests.ClientDisconnect`, see service/errors.py).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_inference(scope):
            await self.app(scope, receive, send)
            return
        # A plain asyncio task and one cancel scope rather than an anyio task group: the
        # group, its task and its event were an eighth of the event loop's time per
        # request (py-spy, c=32). The scope, not `Task.cancel`, keeps the shielded
        # clean-ups in the routes shielded.
        watcher: asyncio.Task | None = None
        responding = gone = False

        with anyio.CancelScope() as handling:

            async def watch() -> None:
                nonlocal gone
                while (await receive())["type"] != "http.disconnect":
                    pass
                if not responding:
                    gone = True
                    handling.cancel()

            async def receive_body() -> Message:
                nonlocal watcher
                message = await receive()
                if (watcher is None and message["type"] == "http.request"
                        and not message.get("more_body", False)):
                    watcher = asyncio.get_running_loop().create_task(watch())
                return message

            async def send_response(message: Message) -> None:
                nonlocal responding
                responding = True  # before the await: a completed response reads as a disconnect
                await send(message)

            try:
                await self.app(scope, receive_body, send_response)
            finally:
                if watcher is not None:
                    watcher.cancel()
        if gone:
            self.metrics.rejected.labels("disconnected").inc()
            await disconnected_response("before the answer")(scope, receive, send)
