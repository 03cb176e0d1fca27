"""Real photographs for checking that a fast inference path agrees with fp32.

Two users: the service's ``auto`` backend choice (`real_images`), and
``ocellus quantize --unlabelled`` (`photo_split`), which calibrates the default
models' int8 variants on one half of the bundled photos and checks them on the
other.

Random tensors are a poor test of lower precision: logits of noise are close
together and flip easily, while real photos are what is served. The sources, in
order: the export's own validation images (the folder ``manifest.dataset.val_dir``,
which ``ocellus train`` writes for every task), then photos bundled with
installed packages and the OS (scikit-image, scikit-learn, darknet). Each photo
also gives a few deterministic crops and a mirror image, so a handful of photos
yields enough distinct model inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from models.export import Manifest
from models.imaging import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

# Natural photos only (not microscopy, text or synthetic patterns).
_SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "camera", "coins")
_DARKNET = Path("/usr/share/darknet/data")


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W) or (H, W, 3|4) uint8 → uint8 (3, H, W) RGB."""
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return torch.from_numpy(np.array(array[..., :3], dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _read(path: Path) -> torch.Tensor | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return _to_tensor(np.asarray(im.convert("RGB")))
    except (OSError, ValueError):
        return None


def _val_dir(manifest: Manifest | None) -> Path | None:
    dataset = (manifest.dataset or {}) if manifest is not None else {}
    if dataset.get("val_dir"):
        return Path(dataset["val_dir"])
    # Classifiers exported before `val_dir` named their ImageFolder tree as `root`.
    return Path(dataset["root"]) / "val" if dataset.get("root") else None


def _export_val_images(manifest: Manifest | None, limit: int) -> Iterator[torch.Tensor]:
    val = _val_dir(manifest)
    if val is None or not val.is_dir():
        return
    files = sorted(p for p in val.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    # Spread over classes: the folders are sorted, so take every k-th file.
    step = max(1, len(files) // max(1, limit))
    for path in files[::step][:limit]:
        if (im := _read(path)) is not None:
            yield im


def bundled_photos() -> Iterator[torch.Tensor]:
    try:
        from skimage import data
    except ImportError:
        data = None
    if data is not None:
        for name in _SKIMAGE_PHOTOS:
            try:
                yield _to_tensor(np.asarray(getattr(data, name)()))
            except Exception:  # noqa: BLE001 - a missing or undownloadable sample is skipped
                continue
    try:
        from sklearn.datasets import load_sample_images

        for array in load_sample_images().images:
            yield _to_tensor(array)
    except Exception:  # noqa: BLE001 - scikit-learn is optional
        pass
    if _DARKNET.is_dir():
        for path in sorted(_DARKNET.glob("*.jpg")):
            if (im := _read(path)) is not None:
                yield im


def views(image: torch.Tensor) -> Iterator[torch.Tensor]:
    """The photo, its mirror, and four corner crops of 70% (uint8 (3, h, w) each)."""
    yield image
    yield image.flip(-1)
    _, h, w = image.shape
    ch, cw = int(h * 0.7), int(w * 0.7)
    for y, x in ((0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw)):
        yield image[:, y:y + ch, x:x + cw].contiguous()


def real_images(manifest: Manifest | None = None, *, limit: int = 32) -> list[torch.Tensor]:
    """Up to `limit` real-photo model inputs, uint8 (3, H, W) RGB, deterministic.

    The export's own validation images come first (as they are), then views of
    bundled photos. Empty only when no source is installed.
    """
    images = list(_export_val_images(manifest, limit))
    if len(images) < limit:
        photos = list(bundled_photos())
        # Round-robin over the views so a small limit still covers every photo.
        per_photo = [list(views(p)) for p in photos]
        for k in range(6):
            for photo_views in per_photo:
                if len(images) >= limit:
                    break
                images.append(photo_views[k])
    if not images:
        log.warning("no real images found for the backend agreement check")
    return images[:limit]


def photo_split() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The bundled photos in two disjoint halves, alternate photos each: one to
    calibrate on, one held out to check the result on."""
    photos = list(bundled_photos())
    return photos[::2], photos[1::2]
