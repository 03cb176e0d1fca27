"""``POST /v1/classify``: image classification, the top classes of each upload."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.deps import ClassifyModelDep, MetricsDep, SettingsDep, StoreDep
from service.inputs import Deadline, prepare_uploads
from service.schemas import (
    ClassifyResponse,
    ClassifyResult,
    ErrorResponse,
    ModelRef,
    Prediction,
)
from service.uploads import UPLOAD_BODY, UploadsDep

router = APIRouter(prefix="/v1/classify", tags=["inference"])

ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 413, 415, 422, 503)}


@router.post("", response_model=ClassifyResponse, responses=ERRORS, openapi_extra=UPLOAD_BODY)
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
