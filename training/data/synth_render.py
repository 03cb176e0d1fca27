"""Rendering for synth-detect: photo backgrounds, garment cut-outs and exact boxes.

Pure numpy/PIL, no file output (``synth_detect`` writes the files). Conventions:

* Images are ``(H, W, 3)`` uint8 RGB arrays.
* A garment's alpha is its own Fashion-MNIST intensity (garments are bright on black),
  ramped so that intensity <= ``ALPHA_LOW`` is exactly transparent and >= ``ALPHA_HIGH``
  fully opaque; alpha under ``MIN_ALPHA`` is cut to 0. The cut-out is trimmed to its
  nonzero alpha after scaling, so its extent is the object's tight extent.
* A box is the object's full pasted extent (pixels with nonzero alpha) clipped to the
  image frame; it ignores occlusion by later objects, which is kept moderate instead
  (at most ``MAX_HIDDEN`` of an object may be hidden, by overlap and frame edges together).
  Boxes are integer pixel ``xyxy`` with exclusive ``x1, y1``.
* Outside the boxes the composite equals the background exactly (before JPEG).
"""

from __future__ import annotations

import colorsys
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from skimage.measure import label as connected_components

from models.errors import DatasetError

logger = logging.getLogger(__name__)

ALPHA_LOW = 25  # intensity at or below which a garment pixel is fully transparent
ALPHA_HIGH = 90  # intensity at or above which it is fully opaque
MIN_ALPHA = 0.1  # alpha below this (after scaling) is set to 0, i.e. not part of the object
MIN_SIDE_PX = 24  # smallest longest-side of a pasted object
MAX_SIDE_FRACTION = 0.4  # largest longest-side, as a fraction of the image's shorter side
MAX_HIDDEN = 0.5  # largest fraction of an object hidden by later objects or the frame
MAX_OUT_OF_FRAME = 0.3  # largest fraction of an object placed outside the frame
MAX_OBJECTS = 6
PLACEMENT_TRIES = 12


def _sklearn_photo(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)

    return load


def _skimage_photo(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


#: Real photos bundled with scikit-image and scikit-learn (all load offline).
BACKGROUND_SOURCES: dict[str, Callable[[], np.ndarray]] = {
    **{
        f"skimage.{n}": _skimage_photo(n)
        for n in ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick", "grass",
                  "gravel", "coins", "clock", "immunohistochemistry")
    },
    "sklearn.china": _sklearn_photo("china.jpg"),
    "sklearn.flower": _sklearn_photo("flower.jpg"),
}


def load_backgrounds() -> list[np.ndarray]:
    """Load the bundled background photos as ``(H, W, 3)`` uint8 RGB arrays.

    Raises:
        DatasetError: None of the photos could be loaded.
    """
    photos = []
    for name, load in BACKGROUND_SOURCES.items():
        try:
            photo = np.asarray(load())
        except Exception as e:  # a missing optional data file must not stop the others
            logger.warning("background %s unavailable: %s", name, e)
            continue
        if photo.ndim == 2:
            photo = np.repeat(photo[:, :, None], 3, axis=2)  # (H, W) gray -> (H, W, 3)
        photos.append(np.ascontiguousarray(photo[:, :, :3], dtype=np.uint8))
    if not photos:
        raise DatasetError(
            "no background photo could be loaded; expected the sample images bundled with "
            "scikit-image and scikit-learn (pip install scikit-image scikit-learn)"
        )
    return photos


def random_background(
    photos: Sequence[np.ndarray], size: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """A random crop of a random photo, resized to ``size = (W, H)``, maybe flipped and dimmed."""
    width, height = size
    photo = photos[rng.integers(len(photos))]
    ph, pw = photo.shape[:2]
    # Largest crop with the target aspect ratio, then a random 35-100% of it.
    aspect = width / height
    cw, ch = (pw, pw / aspect) if pw / aspect <= ph else (ph * aspect, ph)
    scale = rng.uniform(0.35, 1.0)
    cw, ch = max(8, int(cw * scale)), max(8, int(ch * scale))
    x0, y0 = rng.integers(0, pw - cw + 1), rng.integers(0, ph - ch + 1)
    crop = Image.fromarray(photo[y0 : y0 + ch, x0 : x0 + cw])
    bg = np.asarray(crop.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    if rng.random() < 0.5:
        bg = bg[:, ::-1]
    bg = bg * rng.uniform(0.75, 1.15)  # brightness jitter
    return np.clip(bg, 0, 255).round().astype(np.uint8)


def clean_garment(gray: np.ndarray) -> np.ndarray:
    """Zero a 28x28 garment's background noise: faint pixels and specks away from it.

    Args:
        gray: ``(28, 28)`` uint8 Fashion-MNIST image.

    Returns:
        A copy in which pixels <= ``ALPHA_LOW`` and connected components smaller than
        5% of the garment are 0, so they cannot stretch the box.
    """
    mask = gray > ALPHA_LOW
    labels = connected_components(mask, connectivity=2)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes >= 0.05 * sizes.sum()
    return np.where(keep[labels], gray, 0).astype(np.uint8)


@dataclass(frozen=True)
class Cutout:
    """A scaled, tinted garment trimmed to its nonzero alpha.

    Attributes:
        rgb: ``(h, w, 3)`` float32 colour in 0..255.
        alpha: ``(h, w)`` float32 in [0, 1]; every row and column has a nonzero entry.
    """

    rgb: np.ndarray
    alpha: np.ndarray


def random_tint(rng: np.random.Generator) -> np.ndarray:
    """A random RGB colour in 0..255 (one in five nearly neutral)."""
    saturation = rng.uniform(0.0, 0.15) if rng.random() < 0.2 else rng.uniform(0.35, 1.0)
    rgb = colorsys.hsv_to_rgb(rng.random(), saturation, rng.uniform(0.55, 1.0))
    return np.array(rgb, dtype=np.float32) * 255.0


def make_cutout(gray: np.ndarray, longest_side: int, rng: np.random.Generator) -> Cutout | None:
    """Scale and tint one garment so its tight extent's longest side is ``longest_side``.

    Args:
        gray: ``(28, 28)`` uint8 garment, bright on black.
        longest_side: Target size in pixels of the longer side of the visible garment.
        rng: Randomness for flip, aspect jitter and tint.

    Returns:
        The cut-out, or None when the garment has no pixel above ``ALPHA_LOW``.
    """
    clean = clean_garment(gray)
    rows, cols = np.flatnonzero(clean.any(1)), np.flatnonzero(clean.any(0))
    if rows.size == 0:
        return None
    # Tight crop plus a 1 px black margin so bilinear edges fade out instead of being cut.
    crop = np.pad(clean[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 1)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    h, w = crop.shape
    stretch = rng.uniform(0.85, 1.15)  # mild aspect jitter
    h, w = h * stretch, w / stretch
    scale = longest_side / max(h, w)
    new_size = (max(2, round(w * scale)), max(2, round(h * scale)))
    intensity = np.asarray(
        Image.fromarray(np.ascontiguousarray(crop)).resize(new_size, Image.Resampling.BILINEAR),
        dtype=np.float32,
    )  # (h', w')
    alpha = np.clip((intensity - ALPHA_LOW) / (ALPHA_HIGH - ALPHA_LOW), 0.0, 1.0)
    # A faint bilinear fringe would barely change the photo yet widen the box: drop it.
    alpha[alpha < MIN_ALPHA] = 0.0
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    if rows.size == 0:
        return None
    alpha = alpha[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    intensity = intensity[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    # Keep the garment's own shading (folds, seams) under the tint: (h, w, 1) * (3,).
    shade = 0.3 + 0.7 * (intensity / 255.0)
    rgb = shade[:, :, None] * random_tint(rng)
    return Cutout(rgb=rgb.astype(np.float32), alpha=alpha.astype(np.float32))


@dataclass(frozen=True)
class Sample:
    """One rendered detection image.

    Attributes:
        image: ``(H, W, 3)`` uint8 composite.
        background: ``(H, W, 3)`` uint8 photo the objects were pasted on.
        boxes: ``(K, 4)`` int64 ``xyxy`` pixels, ``x1``/``y1`` exclusive, in paste order.
        classes: ``(K,)`` int64 class ids (indices into the data set's names).
    """

    image: np.ndarray
    background: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray


def render_sample(
    photos: Sequence[np.ndarray],
    garments: Sequence[np.ndarray],
    size: tuple[int, int],
    rng: np.random.Generator,
) -> Sample:
    """Paste 1-``MAX_OBJECTS`` garments onto a random photo crop.

    Args:
        photos: Background photos, ``(H, W, 3)`` uint8.
        garments: One ``(N_c, 28, 28)`` uint8 stack per class; class id = position.
        size: Output ``(W, H)``.
        rng: The only randomness used, so a seeded generator gives the same sample.

    Returns:
        The composite with its background, boxes and classes.
    """
    width, height = size
    background = random_background(photos, size, rng)
    canvas = background.astype(np.float32)
    owner = np.full((height, width), -1, dtype=np.int64)  # topmost object at each pixel
    areas: list[int] = []  # full mask area of each placed object (in and out of frame)
    visible: list[int] = []  # its pixels still on top and inside the frame
    boxes: list[tuple[int, int, int, int]] = []
    classes: list[int] = []
    max_side = max(MIN_SIDE_PX, MAX_SIDE_FRACTION * min(width, height))
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        cls = int(rng.integers(len(garments)))
        side = round(np.exp(rng.uniform(np.log(MIN_SIDE_PX), np.log(max_side))))
        cut = make_cutout(garments[cls][rng.integers(len(garments[cls]))], side, rng)
        if cut is None:
            continue
        placed = _place(cut, owner, areas, visible, rng)
        if placed is None:
            continue
        x0, y0, mask = placed  # mask: (h, w) bool of the cut-out's in-frame part
        h, w = mask.shape
        # Crop the cut-out to the frame: (ox, oy) is its offset into the cut-out.
        ox, oy = max(0, -x0), max(0, -y0)
        fx, fy = max(0, x0), max(0, y0)
        a = cut.alpha[oy : oy + h, ox : ox + w, None]  # (h, w, 1)
        region = canvas[fy : fy + h, fx : fx + w]
        region[:] = region * (1.0 - a) + cut.rgb[oy : oy + h, ox : ox + w] * a
        ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        boxes.append(
            (fx + int(xs[0]), fy + int(ys[0]), fx + int(xs[-1]) + 1, fy + int(ys[-1]) + 1)
        )
        classes.append(cls)
    image = np.clip(canvas, 0, 255).round().astype(np.uint8)
    return Sample(
        image=image,
        background=background,
        boxes=np.array(boxes, dtype=np.int64).reshape(-1, 4),
        classes=np.array(classes, dtype=np.int64),
    )


def _place(
    cut: Cutout,
    owner: np.ndarray,
    areas: list[int],
    visible: list[int],
    rng: np.random.Generator,
) -> tuple[int, int, np.ndarray] | None:
    """Find a position for ``cut`` that hides no object beyond ``MAX_HIDDEN``; update state.

    Returns:
        ``(x0, y0, mask)`` with the cut-out's top-left (may be negative) and the bool mask of
        its in-frame part, or None if every try hid too much of something.
    """
    height, width = owner.shape
    ch, cw = cut.alpha.shape
    full = cut.alpha > 0  # (ch, cw)
    area = int(full.sum())
    for _ in range(PLACEMENT_TRIES):
        # Allow up to ~30% of the extent beyond each edge; checked exactly below.
        x0 = int(rng.integers(-int(0.3 * cw), max(1, width - int(0.7 * cw)) + 1))
        y0 = int(rng.integers(-int(0.3 * ch), max(1, height - int(0.7 * ch)) + 1))
        ox, oy = max(0, -x0), max(0, -y0)
        fx, fy = max(0, x0), max(0, y0)
        w, h = min(cw - ox, width - fx), min(ch - oy, height - fy)
        if w <= 0 or h <= 0:
            continue
        mask = full[oy : oy + h, ox : ox + w]
        in_frame = int(mask.sum())
        if in_frame < (1.0 - MAX_OUT_OF_FRAME) * area or in_frame == 0:
            continue
        under = owner[fy : fy + h, fx : fx + w]
        lost = np.bincount(under[mask] + 1, minlength=len(areas) + 1)[1:]  # per earlier object
        after = np.array(visible, dtype=np.int64) - lost
        if np.any(after < (1.0 - MAX_HIDDEN) * np.array(areas, dtype=np.int64)):
            continue
        under[mask] = len(areas)
        visible[:] = after.tolist()
        areas.append(area)
        visible.append(in_frame)
        return (x0, y0, mask)
    return None
