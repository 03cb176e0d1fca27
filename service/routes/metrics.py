"""``GET /metrics``: the Prometheus scrape (service/metrics.py), outside the OpenAPI schema.

A scraper that accepts OpenMetrics (Prometheus does) gets it, with the latency
histograms' exemplars (the trace ID of a traced request, service/tracing.py);
others get the classic text format.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client.exposition import choose_encoder

from service.deps import MetricsDep

router = APIRouter(prefix="/metrics", include_in_schema=False)


@router.get("")
async def metrics(m: MetricsDep, request: Request) -> Response:
    encode, media_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(m.registry), media_type=media_type)
