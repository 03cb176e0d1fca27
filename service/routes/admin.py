"""The admin API: reload or roll back a registry model without a restart, and read its
registry history.

Off unless ``OCELLUS_ADMIN_TOKEN`` is set; each call needs that token as
``Authorization: Bearer TOKEN``. ``GET /v1/models`` (models.py) lists what
is served, with version, backend and path.
"""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Depends, Security
from fastapi.security import HTTPBearer

from models.errors import ModelNotReadyError
from service.deps import RegistryEntryDep, require_admin
from service.schemas import RegistryHistory, ReloadResponse, error_responses

# Only documents the scheme in OpenAPI (auto_error=False): `require_admin` checks the token.
ADMIN_TOKEN = HTTPBearer(auto_error=False, scheme_name="adminToken",
                         description="OCELLUS_ADMIN_TOKEN, as `Authorization: Bearer TOKEN`")
router = APIRouter(prefix="/v1/models", tags=["admin"],
                   dependencies=[Security(ADMIN_TOKEN), Depends(require_admin)])

ERRORS = error_responses(401, 403, 404, 409)


@router.post("/{name}/reload", response_model=ReloadResponse, responses=ERRORS)
async def reload_model(entry: RegistryEntryDep) -> ReloadResponse:
    """Serve the registry's current version of `name` now (load, warm, then switch).

    409 when the version fails to load; the old version keeps serving.
    """
    result = await entry.watcher.reload(entry.name, force=True)
    return ReloadResponse(name=result.name, version=result.version, status=result.status,
                          previous=result.previous)


@router.post("/{name}/rollback", response_model=ReloadResponse, responses=ERRORS)
async def rollback_model(entry: RegistryEntryDep) -> ReloadResponse:
    """Point `name`'s ``current`` at the version promoted before it, and serve that."""
    result = await entry.watcher.rollback(entry.name)
    return ReloadResponse(name=result.name, version=result.version, status=result.status,
                          previous=result.previous)


@router.get("/{name}/history", response_model=RegistryHistory, responses=ERRORS)
async def model_history(entry: RegistryEntryDep) -> RegistryHistory:
    """The registry's versions of `name`, the current one, and its promotions and
    rollbacks, oldest first."""
    registry = entry.watcher.registry

    def read() -> RegistryHistory:
        versions = registry.versions(entry.name)
        if not versions:
            raise ModelNotReadyError(f"the registry has no version of {entry.name!r}")
        return RegistryHistory(name=entry.name, current=registry.current(entry.name),
                               versions=versions, events=registry.history(entry.name))

    return await anyio.to_thread.run_sync(read)
