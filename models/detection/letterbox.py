"""Letterbox resize (keep aspect ratio, pad to a square) and its exact box mapping.

Boxes use continuous pixel-edge coordinates: a box ``(0, 0, W, H)`` covers the
whole image. Resizing an image from ``w`` to ``new_w`` columns maps the edge
coordinate ``x`` to ``x * new_w / w``, so the forward and inverse maps below are
exact (up to float rounding) for the image the resize actually produced. The
per-axis scales use the rounded output size, not the ideal ratio, for that
reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

PAD_VALUE = 114  # Grey, as in YOLO; padding is not a colour objects usually have.


@dataclass(frozen=True)
class LetterboxParams:
    """How one image was placed into a ``size`` x ``size`` canvas.

    Attributes:
        orig_h: Height of the original image.
        orig_w: Width of the original image.
        new_h: Height of the resized image inside the canvas.
        new_w: Width of the resized image inside the canvas.
        pad_top: Rows of padding above the image.
        pad_left: Columns of padding left of the image.
        size: Side of the square canvas.
    """

    orig_h: int
    orig_w: int
    new_h: int
    new_w: int
    pad_top: int
    pad_left: int
    size: int

    @property
    def scale_x(self) -> float:
        return self.new_w / self.orig_w

    @property
    def scale_y(self) -> float:
        return self.new_h / self.orig_h


def letterbox_params(orig_h: int, orig_w: int, size: int) -> LetterboxParams:
    """Placement of an ``orig_h`` x ``orig_w`` image in a ``size`` square canvas.

    The longer side becomes `size` (images are scaled up as well as down) and
    the image is centred.
    """
    if orig_h <= 0 or orig_w <= 0:
        raise ValueError(f"image size must be positive, got {orig_h}x{orig_w}")
    r = min(size / orig_h, size / orig_w)
    new_h = min(size, max(1, round(orig_h * r)))
    new_w = min(size, max(1, round(orig_w * r)))
    return LetterboxParams(orig_h, orig_w, new_h, new_w, (size - new_h) // 2,
                           (size - new_w) // 2, size)


def letterbox(image: torch.Tensor, size: int, *,
              interpolation: InterpolationMode = InterpolationMode.BILINEAR,
              fill: int = PAD_VALUE) -> tuple[torch.Tensor, LetterboxParams]:
    """uint8 ``(3, H, W)`` → uint8 ``(3, size, size)`` and the placement used."""
    _, h, w = image.shape
    p = letterbox_params(h, w, size)
    if (p.new_h, p.new_w) != (h, w):
        image = F.resize(image, [p.new_h, p.new_w], interpolation=interpolation, antialias=True)
    canvas = image.new_full((image.shape[0], size, size), fill)
    canvas[:, p.pad_top:p.pad_top + p.new_h, p.pad_left:p.pad_left + p.new_w] = image
    return canvas, p


def boxes_to_letterbox(boxes: torch.Tensor, p: LetterboxParams) -> torch.Tensor:
    """xyxy ``(N, 4)`` in original pixels → xyxy ``(N, 4)`` in canvas pixels."""
    scale = boxes.new_tensor([p.scale_x, p.scale_y, p.scale_x, p.scale_y])
    offset = boxes.new_tensor([p.pad_left, p.pad_top, p.pad_left, p.pad_top])
    return boxes * scale + offset


def boxes_from_letterbox(boxes: torch.Tensor, p: LetterboxParams, *,
                         clip: bool = True) -> torch.Tensor:
    """xyxy ``(N, 4)`` in canvas pixels → xyxy ``(N, 4)`` in original pixels.

    The exact inverse of `boxes_to_letterbox`; with ``clip`` the result is
    clamped to the original image (boxes reaching into the padding).
    """
    scale = boxes.new_tensor([p.scale_x, p.scale_y, p.scale_x, p.scale_y])
    offset = boxes.new_tensor([p.pad_left, p.pad_top, p.pad_left, p.pad_top])
    out = (boxes - offset) / scale
    if clip:
        limit = boxes.new_tensor([p.orig_w, p.orig_h, p.orig_w, p.orig_h])
        out = torch.minimum(out.clamp(min=0), limit)
    return out
