"""OpenTelemetry's tracer provider for an Ocellus process, when the ``OTEL_*`` variables ask.

One home for the set-up that the service (service/tracing.py, which adds the
FastAPI instrumentation) and the retraining job (training/retrain.py) share.
Tracing is on when ``OTEL_TRACES_EXPORTER`` is ``otlp`` or an OTLP endpoint is
set (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``),
and ``OTEL_SDK_DISABLED`` is not ``true``. The SDK reads the other standard
variables itself (sampler, endpoint, headers, batch delays); spans go out over
OTLP/HTTP. Without it, the API's tracers are no-ops.
"""

from __future__ import annotations

import logging
import os
from typing import Any

_installed: Any = None  # the process's provider, once set: OTel's is global and set once


def wanted() -> bool:
    """Whether the standard OTel variables ask for traces.

    ``OTEL_TRACES_EXPORTER`` is a comma-separated list: ``none`` in it turns traces
    off even where an endpoint is set (for metrics or logs, say), ``otlp`` on.
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip().lower() for e in os.environ.get("OTEL_TRACES_EXPORTER", "")
                 .split(",") if e.strip()}
    if "none" in exporters:
        return False
    return "otlp" in exporters or any(os.environ.get(v) for v in (
        "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def install_provider(service_name: str) -> Any:
    """The process's tracer provider (OTLP/HTTP exporter, batched), set up once; None
    when traces are not wanted.

    ``OTEL_SERVICE_NAME`` (or ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``)
    overrides `service_name`. The provider sends its buffered spans at exit; call
    its ``force_flush()`` to send them sooner.
    """
    global _installed
    if not wanted():
        return None
    if _installed is not None:
        return _installed
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if protocol != "http/protobuf":
        logging.getLogger(__name__).warning(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%s: Ocellus exports over OTLP/HTTP (protobuf) only; "
            "point the endpoint at the collector's HTTP port (4318)", protocol)
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; given
    # attributes would win over them, so the default name is given only without them.
    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", "")
    resource = Resource.create() if named else Resource.create({"service.name": service_name})
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _installed = provider
    return provider
