"""``GET /metrics``: the Prometheus scrape (service/metrics.py), outside the OpenAPI schema.

A scraper that accepts OpenMetrics (Prometheus does) gets it, with the latency
histograms' exemplars (the trace ID of a traced request, service/tracing.py);
others get the classic text format.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from service.deps import MetricsDep

router = APIRouter(prefix="/metrics", include_in_schema=False)


@router.get("")
async def metrics(m: MetricsDep, request: Request) -> Response:
    if "application/openmetrics-text" in request.headers.get("accept", ""):
        return Response(openmetrics.generate_latest(m.registry),
                        media_type=openmetrics.CONTENT_TYPE_LATEST)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
