"""OpenTelemetry traces of every request's stages, off unless the ``OTEL_*`` variables ask.

When they do (models/telemetry.py: ``OTEL_TRACES_EXPORTER=otlp`` or an OTLP
endpoint), spans go out over OTLP/HTTP; the SDK reads the rest of the standard
variables (sampler, endpoint, headers, batch delays; ``OTEL_SERVICE_NAME``,
default ``ocellus``).

The FastAPI instrumentation makes one server span per request (a caller's W3C
``traceparent`` is its parent). Under it:

- ``read body``: the upload read and parsed (service/uploads.py, service/oip.py);
- ``decode``: decode and preprocess of one image, in the decode pool (its thread
  runs in a copy of the request's context, so the span has the right parent);
- ``queue``, ``forward`` and ``postprocess``: from the batcher's inference thread,
  with the request's own times. One ``batch`` span per forward pass holds the
  pass itself, linked to every request it served; each request's ``forward``
  span links back to it;
- ``encode``: the response built from the results.

Attributes: ``ocellus.model``, ``ocellus.model.version``, ``ocellus.backend``,
``ocellus.batch.size``, ``ocellus.images``. Without tracing, `tracer` is the API's
no-op tracer and a span costs a function call.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace

from models.telemetry import install_provider
from service.context import QUIET_ROUTES

log = logging.getLogger(__name__)

tracer = trace.get_tracer("ocellus")
# Probes and scrapes make no traces: their paths, anchored at the URL's end.
EXCLUDED_URLS = ",".join(f"{re.escape(path)}$" for path in sorted(QUIET_ROUTES))


def setup_tracing(app: Any) -> Any:
    """Install the tracer provider (models/telemetry.py) and instrument `app`.

    Returns:
        The provider (`shutdown` flushes it), or None when tracing is off.
    """
    provider = install_provider("ocellus")
    if provider is None:
        return None
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # No span per ASGI receive and send: one per body chunk of an upload otherwise.
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider,
                                       excluded_urls=EXCLUDED_URLS,
                                       exclude_spans=["receive", "send"])
    log.info("tracing on: OTLP/HTTP to %s", os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT") or "the default endpoint",
        extra={"event": "tracing_on"})
    return provider


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A child span of the current one, with ``ocellus.*`` attributes (None values left out).

    Under a span that is not recorded (tracing off, or a request the sampler left out,
    whose children the parent-based sampler leaves out too) it yields that span and
    starts nothing: the no-op tracer's context switch costs more than the work it wraps.
    """
    parent = trace.get_current_span()
    if not parent.is_recording():
        yield parent
        return
    with tracer.start_as_current_span(name) as current:
        if current.is_recording():
            current.set_attributes({f"ocellus.{k}": v for k, v in attributes.items()
                                    if v is not None})
        yield current


def model_attributes(served: Any) -> dict[str, Any]:
    """The span attributes that name the model serving a request."""
    return {"model": served.name, "model.version": str(served.manifest.version),
            "backend": served.backend}


def trace_id() -> str | None:
    """The current trace's ID in hex (for exemplars and logs), None when not recorded."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid and ctx.trace_flags.sampled else None
