"""The probes: ``/healthz`` (liveness) and ``/readyz`` (readiness), at the root as
orchestrators expect them, outside ``/v1``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.deps import StoreDep
from service.routes.models import refused_models
from service.schemas import Readiness, Status

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Status)
async def healthz() -> Status:
    """The process is alive."""
    return Status(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(store: StoreDep) -> Readiness | JSONResponse:
    """Whether to send traffic, and which models were refused and why.

    200 ``ready``, or ``degraded`` when some models serve and others were refused
    (partial availability: the refused ones answer 404 with the reason); 503
    ``loading`` until the start-up loading is done, then ``unavailable`` if no
    model serves.
    """
    down = [name for name in store.refused if name not in store.models]
    status = ("loading" if store.loading else "unavailable" if not store.ready
              else "degraded" if down else "ready")
    body = Readiness(status=status, models=list(store.models),
                     refused=refused_models(store, admin=False))
    if status in ("ready", "degraded"):
        return body
    return JSONResponse(body.model_dump(), status_code=503)
