"""The web console at ``/``, and ``GET /v1/stats``, the metrics it charts, as JSON.

The console is static files in service/console/ (HTML, CSS and plain
JavaScript: no build step, nothing fetched from elsewhere, so it works offline),
served as they are; all it does, it does through the API.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

from service.deps import MetricsDep

CONSOLE = Path(__file__).resolve().parents[1] / "console"
ASSETS = StaticFiles(directory=CONSOLE)  # mounted at /console by the app

router = APIRouter(tags=["console"])


@router.get("/", include_in_schema=False)
async def console() -> FileResponse:
    return FileResponse(CONSOLE / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/v1/stats")
async def stats(m: MetricsDep) -> dict[str, Any]:
    """Every metric sample of ``/metrics``, as JSON: ``{"time", "metrics": {sample name:
    [{"labels", "value"}]}}``; counters are totals since start, as Prometheus scrapes them."""
    found: dict[str, list[dict[str, Any]]] = {}
    for family in m.registry.collect():
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                found.setdefault(sample.name, []).append(
                    {"labels": sample.labels, "value": sample.value})
    return {"time": time.time(), "metrics": found}
