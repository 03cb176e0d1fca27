"""A detection answer as an image: boxes and labels drawn on the upload (``render=true``)."""

from __future__ import annotations

import io

from fastapi import Request
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.v2 import functional as F

from models.detection.predictor import Detection
from models.imaging import decode_image
from service.settings import Settings

IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG"}
# Distinct, readable colours (Tableau 10), one per class id modulo 10.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


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


def render_detections(data: bytes, detections: list[Detection], settings: Settings,
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
