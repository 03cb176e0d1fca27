"""``POST /v1/detect``: object detection, as JSON or as an annotated image."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import WithJsonSchema

from models.tasks import get_task
from service.deps import DetectModelDep, InferenceDep
from service.errors import RequestError
from service.inference import INFERENCE_ERRORS, model_ref
from service.inputs import read_part
from service.render import render_detections, wants_image
from service.schemas import Detection, DetectResponse, DetectResult
from service.uploads import UPLOAD_BODY, UploadsDep

TASK = get_task("detect")
router = APIRouter(prefix=TASK.route, tags=["inference"])  # /v1/detect

# What `parse_classes` reads ("0,2", "5", " 1 , 3,"); the OpenAPI schema says the same.
CLASS_IDS = re.compile(r"^ *([0-9]+ *)?(, *([0-9]+ *)?)*$")
ClassIds = Annotated[str, WithJsonSchema({"type": "string", "pattern": CLASS_IDS.pattern})]


def parse_classes(values: list[str] | None, num_classes: int) -> list[int] | None:
    """``["0,2", "5"]`` → ``[0, 2, 5]``; every id must be a class index of the model.

    Raises:
        RequestError: A value that is not an integer, or an id out of range (422).
    """
    if not values:
        return None
    for value in values:
        if not CLASS_IDS.fullmatch(value):
            raise RequestError(f"classes: expected comma-separated class ids (integers), "
                               f"got {value!r}")
    ids = [int(p) for v in values for p in v.split(",") if p.strip()]
    bad = [i for i in ids if not 0 <= i < num_classes]
    if bad:
        raise RequestError(f"classes: ids {bad} are out of range; the model has {num_classes} "
                           f"classes (ids 0..{num_classes - 1})")
    return ids or None


@router.post(
    "", response_model=DetectResponse, openapi_extra=UPLOAD_BODY,
    responses={**INFERENCE_ERRORS, 200: {
        "content": {"image/png": {}, "image/jpeg": {}},
        "description": "JSON detections, or the annotated image"}})
async def detect(
    request: Request,
    inference: InferenceDep,
    model: DetectModelDep,  # before the upload: a bad name costs no body read
    files: UploadsDep,
    conf: Annotated[float, Query(ge=0, le=1, description="score threshold")] = 0.25,
    iou: Annotated[float, Query(ge=0, le=1, description="NMS IoU threshold")] = 0.45,
    max_det: Annotated[int, Query(ge=1, le=1000, description="detections per image")] = 300,
    classes: Annotated[list[ClassIds] | None, Query(
        description="keep only these class ids: comma-separated and/or repeated")] = None,
    agnostic: Annotated[bool, Query(description="NMS across classes")] = False,
    multi_label: Annotated[bool | None, Query(
        description="every class above conf at a location is a candidate, not only the "
                    "best one; default: the model's own way (true for NanoDet, as upstream; "
                    "false for the YOLO-style detector, as Ultralytics)")] = None,
    render: Annotated[bool | None, Query(
        description="return the image with boxes drawn (PNG, or JPEG with Accept: "
                    "image/jpeg) instead of JSON; only the FIRST image of the request is "
                    "drawn. Accept: image/png or image/jpeg asks for it too")] = None,
) -> DetectResponse | Response:
    """Detect objects in one or more uploaded images (multipart parts named ``file``).

    Boxes are ``[x1, y1, x2, y2]`` in the pixels of the original, upright image.
    """
    with inference.use(model, TASK.name) as served:
        class_ids = parse_classes(classes, len(served.predictor.labels))
        media_type = wants_image(request, render)
        images, results = await inference.run(
            served, files, counted=lambda detections: detections, conf=conf, iou=iou,
            max_det=max_det, classes=class_ids, agnostic=agnostic, multi_label=multi_label)
        if media_type is not None:
            settings, upload = inference.settings, files[0].file
            # Read in the pool, as for decoding (service/inputs.py).
            body = await inference.pool.run(
                lambda: render_detections(read_part(upload, settings), results[0], settings,
                                          media_type))
            return Response(body, media_type=media_type,
                            headers={"X-Detections": str(len(results[0]))})
        return DetectResponse(model=model_ref(served), results=[
            DetectResult(filename=im.filename, width=im.width, height=im.height,
                         detections=[Detection(label=d.label, class_id=d.class_id,
                                               score=d.score, box=d.box) for d in detections])
            for im, detections in zip(images, results, strict=True)])
