"""The HTTP routes: health, readiness, models, metrics, classify (and detect)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.auth import is_admin
from service.deps import ClassifyModelDep, MetricsDep, SettingsDep, StoreDep
from service.inputs import Deadline, prepare_uploads
from service.model_store import ModelStore
from service.redaction import public_manifest
from service.schemas import (
    ClassifyResponse,
    ClassifyResult,
    ErrorResponse,
    ModelInfo,
    ModelRef,
    ModelsResponse,
    Prediction,
    Readiness,
    RefusedModel,
    Status,
)
from service.uploads import UPLOAD_BODY, UploadsDep

router = APIRouter()

ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 413, 415, 422, 503)}


@router.get("/healthz", response_model=Status, tags=["health"])
async def healthz() -> Status:
    """The process is alive."""
    return Status(status="ok")


def _refused(store: ModelStore, *, admin: bool) -> list[RefusedModel]:
    return [RefusedModel(**r.view(admin=admin), serving=served.manifest.version
                         if (served := store.models.get(r.name)) is not None else None)
            for r in store.refused.values()]


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}},
            tags=["health"])
async def readyz(request: Request) -> Readiness | JSONResponse:
    """Whether to send traffic, and which models were refused and why.

    200 ``ready``, or ``degraded`` when some models serve and others were refused
    (partial availability: the refused ones answer 404 with the reason); 503
    ``loading`` until the start-up loading is done, then ``unavailable`` if no
    model serves.
    """
    store: ModelStore | None = getattr(request.app.state, "store", None)
    if store is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    down = [name for name in store.refused if name not in store.models]
    status = ("loading" if store.loading else "unavailable" if not store.ready
              else "degraded" if down else "ready")
    body = Readiness(status=status, models=list(store.models),
                     refused=_refused(store, admin=False))
    if status in ("ready", "degraded"):
        return body
    return JSONResponse(body.model_dump(), status_code=503)


@router.get("/v1/models", response_model=ModelsResponse, tags=["models"])
async def list_models(request: Request, store: StoreDep) -> ModelsResponse:
    """Each loaded model with its manifest (weights excepted), and the refused ones.

    Paths, training arguments and the training data's location are shown only to
    a caller with the admin token (``Authorization: Bearer TOKEN``).
    """
    admin = is_admin(request)
    return ModelsResponse(models=[
        ModelInfo(name=m.name, version=m.manifest.version, task=m.task,
                  device=str(m.predictor.device), loaded_at=m.loaded_at,
                  backend=m.backend, backend_details=m.backend_details(),
                  batching=m.batching(),
                  path=str(m.path) if admin else None,
                  manifest=m.manifest.to_dict() if admin else public_manifest(
                      m.manifest.to_dict()))
        for m in list(store.models.values())
    ], refused=_refused(store, admin=admin))


@router.get("/metrics", include_in_schema=False)
async def metrics(m: MetricsDep) -> Response:
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


@router.post("/v1/classify", response_model=ClassifyResponse, responses=ERRORS,
             tags=["inference"], openapi_extra=UPLOAD_BODY)
async def classify(
    store: StoreDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    model: ClassifyModelDep,  # before the upload: a bad name costs no body read
    files: UploadsDep,
    top_k: Annotated[int, Query(ge=1, le=1000, description="classes per image")] = 5,
) -> ClassifyResponse:
    """Classify one or more uploaded images (multipart parts named ``file``)."""
    with store.use(model, "classify") as served:
        deadline = Deadline.after(settings.request_timeout_s)  # the body has been read
        images = await prepare_uploads(files, served.predictor, settings,
                                       pool=store.decode_pool, model=served.name,
                                       deadline=deadline)
        for im in images:
            metrics.observe_image(served.name, width=im.width, height=im.height, nbytes=im.nbytes,
                                  brightness=im.brightness)
        results = await served.infer([im.input for im in images], [im.meta for im in images],
                                     timeout_s=deadline.remaining(), top_k=top_k)
        metrics.observe_predictions(served.name, [(r[0].label, r[0].score) for r in results if r])
        return ClassifyResponse(
            model=ModelRef(name=served.name, version=served.manifest.version, task=served.task),
            results=[
                ClassifyResult(filename=im.filename, width=im.width, height=im.height,
                               predictions=[Prediction(label=c.label, index=c.index, score=c.score)
                                            for c in result])
                for im, result in zip(images, results, strict=True)
            ],
        )
