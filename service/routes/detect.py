"""``POST /v1/detect``: object detection, as JSON or as an annotated image."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from models.tasks import get_task
from service.deps import DetectModelDep, InferenceDep
from service.inference import INFERENCE_ERRORS, model_ref
from service.inputs import read_part
from service.options import DetectOptions
from service.render import render_detections, wants_image
from service.schemas import Detection, DetectResponse, DetectResult
from service.tracing import span
from service.uploads import UPLOAD_BODY, read_uploads

TASK = get_task("detect")
router = APIRouter(prefix=TASK.route, tags=["inference"])  # /v1/detect

@router.post(
    "", response_model=DetectResponse, openapi_extra=UPLOAD_BODY,
    responses={**INFERENCE_ERRORS, 200: {
        "content": {"image/png": {}, "image/jpeg": {}},
        "description": "JSON detections, or the annotated image"}})
async def detect(
    request: Request,
    inference: InferenceDep,
    model: DetectModelDep,  # checked before the upload is read
    options: Annotated[DetectOptions, Query()],
    render: Annotated[bool | None, Query(
        description="return the image with boxes drawn (PNG, or JPEG with Accept: "
                    "image/jpeg) instead of JSON; only the FIRST image of the request is "
                    "drawn. Accept: image/png or image/jpeg asks for it too")] = None,
) -> DetectResponse | Response:
    """Detect objects in one or more uploaded images (multipart parts named ``file``).

    Boxes are ``[x1, y1, x2, y2]`` in the pixels of the original, upright image.
    """
    async with read_uploads(request, inference.settings) as files:
        with inference.use(model, TASK.name) as served:
            postprocess = options.postprocess_options(inference.settings,
                                                      len(served.predictor.labels))
            media_type = wants_image(request, render)
            images, results = await inference.run(
                served, files, **postprocess)
            if media_type is not None:
                settings, upload = inference.settings, files[0].file
                # Read in the pool, as for decoding (service/inputs.py).
                body = await inference.pool.run(
                    lambda: render_detections(read_part(upload, settings), results[0], settings,
                                              media_type))
                return Response(body, media_type=media_type,
                                headers={"X-Detections": str(len(results[0]))})
            with span("encode"):
                return DetectResponse(model=model_ref(served), results=[
                    DetectResult(filename=im.filename, width=im.width, height=im.height,
                                 detections=[Detection(label=d.label, class_id=d.class_id,
                                                       score=d.score, box=d.box)
                                             for d in detections])
                    for im, detections in zip(images, results, strict=True)])
