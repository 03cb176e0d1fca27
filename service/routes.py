"""The HTTP routes: health, readiness, models, metrics, classify (and detect)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import MetricsDep, SettingsDep, StoreDep
from service.inputs import prepare_uploads
from service.schemas import (
    ClassifyResponse,
    ClassifyResult,
    ErrorResponse,
    ModelInfo,
    ModelRef,
    ModelsResponse,
    Prediction,
    Status,
)
from service.uploads import UPLOAD_BODY, UploadsDep

router = APIRouter()

ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 413, 415, 422, 503)}
ModelParam = Annotated[str | None, Query(description="model name; default: the first loaded "
                                                      "model of this task")]


@router.get("/healthz", response_model=Status, tags=["health"])
async def healthz() -> Status:
    """The process is alive."""
    return Status(status="ok")


@router.get("/readyz", response_model=Status, responses={503: {"model": Status}},
            tags=["health"])
async def readyz(request: Request) -> Status | JSONResponse:
    """200 once the models are loaded, 503 before."""
    store = getattr(request.app.state, "store", None)
    if store is None or not store.ready:
        return JSONResponse({"status": "loading"}, status_code=503)
    return Status(status="ready")


@router.get("/v1/models", response_model=ModelsResponse, tags=["models"])
async def list_models(store: StoreDep) -> ModelsResponse:
    """Each loaded model with its manifest (weights excepted)."""
    return ModelsResponse(models=[
        ModelInfo(name=m.name, version=m.manifest.version, task=m.task,
                  device=str(m.predictor.device), loaded_at=m.loaded_at,
                  backend=m.backend, backend_details=m.backend_details(),
                  batching=m.batching(),
                  path=str(m.path),
                  manifest=m.manifest.to_dict())
        for m in store.models.values()
    ])


@router.get("/metrics", include_in_schema=False)
async def metrics(m: MetricsDep) -> Response:
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


@router.post("/v1/classify", response_model=ClassifyResponse, responses=ERRORS,
             tags=["inference"], openapi_extra=UPLOAD_BODY)
async def classify(
    store: StoreDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    files: UploadsDep,
    top_k: Annotated[int, Query(ge=1, le=1000, description="classes per image")] = 5,
    model: ModelParam = None,
) -> ClassifyResponse:
    """Classify one or more uploaded images (multipart parts named ``file``)."""
    with store.use(model, "classify") as served:
        images = await prepare_uploads(files, served.predictor, settings,
                                       pool=store.decode_pool, model=served.name)
        for im in images:
            metrics.observe_image(served.name, width=im.width, height=im.height, nbytes=im.nbytes,
                                  brightness=im.brightness)
        results = await served.infer([im.input for im in images], [im.meta for im in images],
                                     top_k=top_k)
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
