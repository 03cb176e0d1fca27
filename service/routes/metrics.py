"""``GET /metrics``: the Prometheus scrape (service/metrics.py), outside the OpenAPI schema."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import MetricsDep

router = APIRouter(prefix="/metrics", include_in_schema=False)


@router.get("")
async def metrics(m: MetricsDep) -> Response:
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
