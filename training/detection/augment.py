"""Detection augmentations on uint8 ``(3, H, W)`` images with xyxy pixel boxes.

Every geometric transform maps the boxes with the same affine map it applies
to the pixels (edge coordinates: x → x * new_w / w + offset), then clips them
to the canvas and drops boxes that are mostly cut off. Randomness comes from
the `random` module, which torch's DataLoader seeds differently per worker.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as F

from models.detection.letterbox import PAD_VALUE, letterbox_params

Sample = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # image (3,H,W), boxes (N,4), labels (N,)

MIN_SIDE = 2.0  # px: boxes thinner than this after clipping are dropped
MIN_VISIBLE = 0.25  # boxes keeping less than this fraction of their area are dropped


def _module_rng() -> random.Random:
    # The `random` module's own generator, which DataLoader reseeds in each worker
    # (a Random instance made here would be copied, identical, into every worker).
    return random  # type: ignore[return-value]


def place(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, *, size: int,
          new_h: int, new_w: int, top: int, left: int, canvas: torch.Tensor | None = None
          ) -> Sample:
    """Resize `image` to ``new_h x new_w`` and paste it at (top, left) into a square canvas.

    The offset may be negative or push the image past the edge: what falls
    outside the ``size x size`` canvas is cut, and boxes follow.
    """
    _, h, w = image.shape
    if (new_h, new_w) != (h, w):
        image = F.resize(image, [new_h, new_w], antialias=True)
    if canvas is None:
        canvas = image.new_full((image.shape[0], size, size), PAD_VALUE)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + new_h, size), min(left + new_w, size)
    if y1 > y0 and x1 > x0:
        canvas[:, y0:y1, x0:x1] = image[:, y0 - top:y1 - top, x0 - left:x1 - left]
    scale = boxes.new_tensor([new_w / w, new_h / h, new_w / w, new_h / h])
    moved = boxes * scale + boxes.new_tensor([left, top, left, top])
    return (canvas, *clip_boxes(moved, labels, size))


def clip_boxes(boxes: torch.Tensor, labels: torch.Tensor, size: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip ``(N, 4)`` boxes to ``[0, size]`` and drop the ones mostly cut off."""
    clipped = boxes.clamp(0, size)
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = (w > MIN_SIDE) & (h > MIN_SIDE) & (w * h > MIN_VISIBLE * area)
    return clipped[keep], labels[keep]


def random_scale_translate(sample: Sample, size: int, *, scale: tuple[float, float] = (0.5, 1.5),
                           translate: float = 0.1, rng: random.Random | None = None) -> Sample:
    """Letterbox to `size`, scaled by a random factor and shifted by up to ±translate·size."""
    rng = rng or _module_rng()
    image, boxes, labels = sample
    _, h, w = image.shape
    p = letterbox_params(h, w, size)
    s = rng.uniform(*scale)
    new_h, new_w = max(1, round(p.new_h * s)), max(1, round(p.new_w * s))
    dx, dy = (round(rng.uniform(-translate, translate) * size) for _ in range(2))
    return place(image, boxes, labels, size=size, new_h=new_h, new_w=new_w,
                 top=(size - new_h) // 2 + dy, left=(size - new_w) // 2 + dx)


def hflip(sample: Sample) -> Sample:
    """Mirror left-right: x1' = W - x2, x2' = W - x1."""
    image, boxes, labels = sample
    w = image.shape[-1]
    flipped = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
    return image.flip(-1), flipped, labels


def color_jitter(image: torch.Tensor, *, hue: float = 0.015, saturation: float = 0.5,
                 brightness: float = 0.3, rng: random.Random | None = None) -> torch.Tensor:
    """Random hue shift and saturation / brightness gains (photometric: boxes unchanged)."""
    rng = rng or _module_rng()
    image = F.adjust_hue(image, rng.uniform(-hue, hue))
    image = F.adjust_saturation(image, rng.uniform(1 - saturation, 1 + saturation))
    return F.adjust_brightness(image, rng.uniform(1 - brightness, 1 + brightness))


def mosaic(samples: list[Sample], size: int, *, rng: random.Random | None = None) -> Sample:
    """Four samples tiled around a random centre of a ``2·size`` canvas.

    Each sample is letterbox-resized to longest side `size` and placed in one
    quadrant, touching the centre; the caller scales the result down to `size`.
    """
    if len(samples) != 4:
        raise ValueError(f"mosaic needs 4 samples, got {len(samples)}")
    rng = rng or _module_rng()
    big = 2 * size
    cx, cy = (round(rng.uniform(0.5 * size, 1.5 * size)) for _ in range(2))
    canvas = samples[0][0].new_full((3, big, big), PAD_VALUE)
    all_boxes, all_labels = [], []
    for k, (image, boxes, labels) in enumerate(samples):
        p = letterbox_params(image.shape[1], image.shape[2], size)
        # Quadrant k: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right of (cx, cy).
        left = cx - p.new_w if k in (0, 2) else cx
        top = cy - p.new_h if k in (0, 1) else cy
        _, b, lab = place(image, boxes, labels, size=big, new_h=p.new_h, new_w=p.new_w,
                          top=top, left=left, canvas=canvas)
        all_boxes.append(b)
        all_labels.append(lab)
    return canvas, torch.cat(all_boxes), torch.cat(all_labels)


@dataclass
class DetectionAugment:
    """The training pipeline: optional mosaic, random scale + translate (letterboxed to
    `img_size`), horizontal flip, colour jitter.

    Attributes:
        img_size: Side of the square output.
        scale: Range of the random zoom relative to a plain letterbox.
        translate: Largest shift, as a fraction of `img_size`.
        flip_p: Probability of a horizontal flip.
        hue, saturation, brightness: Colour jitter strengths.
        mosaic_p: Probability of building a 4-image mosaic first.
    """

    img_size: int
    scale: tuple[float, float] = (0.5, 1.5)
    translate: float = 0.1
    flip_p: float = 0.5
    hue: float = 0.015
    saturation: float = 0.5
    brightness: float = 0.3
    mosaic_p: float = 0.5

    def __call__(self, sample: Sample, others: Callable[[], list[Sample]] | None = None
                 ) -> Sample:
        """Augment `sample`; `others` supplies 3 more samples when a mosaic is drawn."""
        rng = _module_rng()
        if others is not None and rng.random() < self.mosaic_p:
            sample = mosaic([sample, *others()], self.img_size, rng=rng)
        sample = random_scale_translate(sample, self.img_size, scale=self.scale,
                                        translate=self.translate, rng=rng)
        if rng.random() < self.flip_p:
            sample = hflip(sample)
        image = color_jitter(sample[0], hue=self.hue, saturation=self.saturation,
                             brightness=self.brightness, rng=rng)
        return image, sample[1], sample[2]
