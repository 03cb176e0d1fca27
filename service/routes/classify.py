"""``POST /v1/classify``: image classification, the top classes of each upload."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from models.tasks import get_task
from service.deps import ClassifyModelDep, InferenceDep
from service.inference import INFERENCE_ERRORS, model_ref
from service.options import ClassifyOptions
from service.schemas import ClassifyResponse, ClassifyResult, Prediction
from service.tracing import span
from service.uploads import UPLOAD_BODY, read_uploads

TASK = get_task("classify")
router = APIRouter(prefix=TASK.route, tags=["inference"])  # /v1/classify


@router.post("", response_model=ClassifyResponse, responses=INFERENCE_ERRORS,
             openapi_extra=UPLOAD_BODY)
async def classify(
    request: Request,
    inference: InferenceDep,
    model: ClassifyModelDep,  # checked before the upload is read
    options: Annotated[ClassifyOptions, Query()],
) -> ClassifyResponse:
    """Classify one or more uploaded images (multipart parts named ``file``)."""
    async with read_uploads(request, inference.settings) as files:
        with inference.use(model, TASK.name) as served:
            images, results = await inference.run(
                served, files,
                **options.postprocess_options(inference.settings, len(served.predictor.labels)))
            with span("encode"):
                return ClassifyResponse(model=model_ref(served), results=[
                    ClassifyResult(filename=im.filename, width=im.width, height=im.height,
                                   predictions=[Prediction(label=c.label, index=c.index,
                                                           score=c.score) for c in classes])
                    for im, classes in zip(images, results, strict=True)])
