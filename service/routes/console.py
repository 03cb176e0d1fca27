"""The web console at ``/`` (its numbers come from ``GET /v1/stats``, stats.py).

The console is static files in service/console/ (HTML, CSS and plain
JavaScript: no build step, nothing fetched from elsewhere, so it works offline),
served as they are; all it does, it does through the API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

CONSOLE = Path(__file__).resolve().parents[1] / "console"
ASSETS = StaticFiles(directory=CONSOLE)  # mounted at /console by the app

# Only this service's own scripts, styles and API (keys sit in the tab's sessionStorage);
# inline style attributes are used for the bars' widths.
CSP = ("default-src 'self'; img-src 'self' blob:; style-src 'self' 'unsafe-inline'; "
       "frame-ancestors 'none'")

router = APIRouter(tags=["console"])


@router.get("/", include_in_schema=False)
async def console() -> FileResponse:
    return FileResponse(CONSOLE / "index.html", headers={
        "Cache-Control": "no-cache", "Content-Security-Policy": CSP})
