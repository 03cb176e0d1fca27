"""``POST /v1/detect``: object detection, as JSON or as an annotated image."""

from __future__ import annotations

import io
import re
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from PIL import Image, ImageDraw, ImageFont
from pydantic import WithJsonSchema
from torchvision.transforms.v2 import functional as F

from models.detection.predictor import Detection as DetectedObject
from models.imaging import decode_image
from service.deps import DetectModelDep, SettingsDep, StoreDep
from service.errors import RequestError
from service.inputs import Deadline, prepare_uploads, read_part
from service.schemas import Detection, DetectResponse, DetectResult, ErrorResponse, ModelRef
from service.settings import Settings
from service.uploads import UPLOAD_BODY, UploadsDep

router = APIRouter()

ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 413, 415, 422, 503)}
IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG"}
# What `parse_classes` reads ("0,2", "5", " 1 , 3,"); the OpenAPI schema says the same.
CLASS_IDS = re.compile(r"^ *([0-9]+ *)?(, *([0-9]+ *)?)*$")
ClassIds = Annotated[str, WithJsonSchema({"type": "string", "pattern": CLASS_IDS.pattern})]
# Distinct, readable colours (Tableau 10), one per class id modulo 10.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


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


def wants_image(request: Request, render: bool | None) -> str | None:
    """The image media type to answer with, or None for JSON.

    ``render`` decides when given (``true`` gives JPEG if ``Accept`` prefers it,
    else PNG); otherwise an ``Accept`` that names image/png or image/jpeg before
    application/json asks for the image.
    """
    if render is False:
        return None
    accept = [t.split(";")[0].strip().lower()
              for t in request.headers.get("accept", "").split(",")]
    first = next((t for t in accept if t in (*IMAGE_TYPES, "application/json")), None)
    if first in IMAGE_TYPES:
        return first
    return "image/png" if render else None


def render_detections(data: bytes, detections: list[DetectedObject], settings: Settings,
                      media_type: str) -> bytes:
    """Decode `data`, draw boxes and labels, encode as `media_type`.

    The drawing's longer side is at most `Settings.render_max_side` (a smaller image
    is drawn at its own size; boxes are scaled with it): a thin image's full width
    can be over JPEG's 65,500-pixel limit, and a drawing needs no more pixels than a
    screen has. CPU-bound: run it in the decode pool, not on the event loop.
    """
    decoded = decode_image(data, max_pixels=settings.max_image_pixels,
                           max_bytes=settings.max_upload_bytes)  # no draft: original size
    tensor = decoded.tensor  # (3, H, W) uint8, upright
    h, w = tensor.shape[-2:]
    ratio = min(1.0, settings.render_max_side / max(h, w))
    if ratio < 1.0:
        size = [max(1, round(h * ratio)), max(1, round(w * ratio))]
        tensor = F.resize(tensor, size, antialias=True)  # (3, h', w')
    image = Image.fromarray(tensor.permute(1, 2, 0).contiguous().numpy())
    sx, sy = image.width / decoded.width, image.height / decoded.height  # original → drawing
    draw = ImageDraw.Draw(image)
    side = min(image.size)
    line = max(2, round(side / 250))
    font = ImageFont.load_default(size=max(12, round(side / 40)))
    for det in detections:
        colour = PALETTE[det.class_id % len(PALETTE)]
        x1, y1, x2, y2 = det.box
        x1, y1, x2, y2 = x1 * sx, y1 * sy, x2 * sx, y2 * sy
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        text = f"{det.label} {det.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        th = bottom - top + 2 * line
        ty = y1 - th if y1 - th >= 0 else y1  # above the box, or inside it at the top edge
        draw.rectangle([x1, ty, x1 + right - left + 2 * line, ty + th], fill=colour)
        draw.text((x1 + line, ty + line - top), text, fill="white", font=font)
    buf = io.BytesIO()
    image.save(buf, IMAGE_TYPES[media_type], **({"quality": 90} if media_type == "image/jpeg"
                                                  else {}))
    return buf.getvalue()


@router.post(
    "/v1/detect", response_model=DetectResponse, tags=["inference"], openapi_extra=UPLOAD_BODY,
    responses={**ERRORS, 200: {"content": {"image/png": {}, "image/jpeg": {}},
                               "description": "JSON detections, or the annotated image"}})
async def detect(
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
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
    with store.use(model, "detect") as served:
        class_ids = parse_classes(classes, len(served.predictor.labels))
        media_type = wants_image(request, render)
        deadline = Deadline.after(settings.request_timeout_s)  # the body has been read
        images = await prepare_uploads(files, served.predictor, settings,
                                       pool=store.decode_pool, model=served.name,
                                       deadline=deadline)
        metrics = request.app.state.metrics
        for im in images:
            metrics.observe_image(served.name, width=im.width, height=im.height, nbytes=im.nbytes,
                                  brightness=im.brightness)
        results = await served.infer([im.input for im in images], [im.meta for im in images],
                                     timeout_s=deadline.remaining(),
                                     conf=conf, iou=iou, max_det=max_det, classes=class_ids,
                                     agnostic=agnostic, multi_label=multi_label)
        metrics.observe_predictions(served.name, [(d.label, d.score) for r in results for d in r])
        if media_type is not None:
            upload = files[0].file  # read in the pool, as for decoding (service/inputs.py)
            body = await store.decode_pool.run(
                lambda: render_detections(read_part(upload, settings), results[0], settings,
                                          media_type))
            return Response(body, media_type=media_type,
                            headers={"X-Detections": str(len(results[0]))})
        return DetectResponse(
            model=ModelRef(name=served.name, version=served.manifest.version, task=served.task),
            results=[
                DetectResult(filename=im.filename, width=im.width, height=im.height,
                             detections=[Detection(label=d.label, class_id=d.class_id,
                                                   score=d.score, box=d.box) for d in result])
                for im, result in zip(images, results, strict=True)
            ],
        )
