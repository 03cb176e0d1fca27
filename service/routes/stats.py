"""``GET /v1/stats``: the metrics of ``/metrics`` as JSON, for the web console."""

from __future__ import annotations

import time

from fastapi import APIRouter

from service.deps import MetricsDep
from service.schemas import Sample, Stats

router = APIRouter(prefix="/v1/stats", tags=["models"])


@router.get("", response_model=Stats)
async def stats(m: MetricsDep) -> Stats:
    """Every sample of ``/metrics`` by sample name (``_total``, ``_bucket``, ``_sum``,
    ``_count`` included), with its labels; counters are totals since the process
    started, as Prometheus scrapes them."""
    found: dict[str, list[Sample]] = {}
    for family in m.registry.collect():
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                found.setdefault(sample.name, []).append(
                    Sample(labels=sample.labels, value=sample.value))
    return Stats(time=time.time(), metrics=found)
