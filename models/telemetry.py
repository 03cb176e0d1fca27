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

import os
from typing import Any


def wanted() -> bool:
    """Whether the standard OTel variables ask for traces."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return (os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "otlp"
            or any(os.environ.get(v) for v in ("OTEL_EXPORTER_OTLP_ENDPOINT",
                                               "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")))


def install_provider(service_name: str) -> Any:
    """Set the global tracer provider (OTLP/HTTP exporter, batched); None when not wanted.

    ``OTEL_SERVICE_NAME`` overrides `service_name`. Call the provider's
    ``shutdown()`` at exit: it sends the spans still buffered.
    """
    if not wanted():
        return None
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME",
                                                               service_name)})
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider
