"""``GET /v1/models``: what is served, and what was refused and why.

The admin actions on a model (reload, rollback) are in admin.py: they share the
prefix but not the access rule.
"""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import IsAdminDep, StoreDep
from service.model_store import ModelStore
from service.redaction import public_manifest
from service.schemas import ModelInfo, ModelsResponse, RefusedModel

router = APIRouter(prefix="/v1/models", tags=["models"])


def refused_models(store: ModelStore, *, admin: bool) -> list[RefusedModel]:
    """The refused models, with the version still served instead of each (if any)."""
    return [RefusedModel(**r.view(admin=admin), serving=served.manifest.version
                         if (served := store.models.get(r.name)) is not None else None)
            for r in store.refused.values()]


@router.get("", response_model=ModelsResponse)
async def list_models(store: StoreDep, admin: IsAdminDep) -> ModelsResponse:
    """Each loaded model with its manifest (weights excepted), and the refused ones.

    Paths, training arguments and the training data's location are shown only to
    a caller with the admin token (``Authorization: Bearer TOKEN``).
    """
    return ModelsResponse(models=[
        ModelInfo(name=m.name, version=m.manifest.version, task=m.task,
                  device=str(m.predictor.device), loaded_at=m.loaded_at,
                  backend=m.backend, backend_details=m.backend_details(),
                  precision=m.manifest.precision,
                  accuracy_drop=m.manifest.quantization.get("drop"),
                  agreement_with_fp32=m.manifest.quantization.get("agreement"),
                  batching=m.batching(),
                  path=str(m.path) if admin else None,
                  manifest=m.manifest.to_dict() if admin else public_manifest(
                      m.manifest.to_dict()))
        for m in list(store.models.values())
    ], refused=refused_models(store, admin=admin))
