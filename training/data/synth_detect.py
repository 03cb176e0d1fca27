"""synth-detect: a small YOLO-format detection data set built from real photos.

This is a stand-in for the user's own detection data: it lets the detector be trained,
evaluated, exported and served end to end without downloading anything. Fashion-MNIST
garments (cut out with their own intensity as alpha, tinted, scaled with bilinear
resampling) are pasted onto random crops of the photos bundled with scikit-image and
scikit-learn. See ``synth_render`` for how boxes are defined (tight, full extent of
each pasted object clipped to the frame; occlusion kept to at most half an object).

Layout written (Ultralytics/YOLO)::

    out/data.yaml                  # path, train, val, nc, names
    out/images/{train,val}/00000.jpg
    out/labels/{train,val}/00000.txt   # "class cx cy w h" per object, normalised to [0, 1]

Train images use garments of the Fashion-MNIST train split and val images garments of
its test split, so val never shows a training garment. About 30% of the images are
rectangular (aspect 0.56-0.85, either orientation) to exercise letterboxing.
"""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from models.errors import DatasetError
from training.data.fashion_mnist import DEFAULT_SOURCE, FOLDER_NAMES, load_split
from training.data.synth_render import Sample, load_backgrounds, render_sample

logger = logging.getLogger(__name__)

#: Five visually distinct garments: fewer classes train faster and stay separable.
DEFAULT_CLASSES: tuple[str, ...] = ("trouser", "dress", "sneaker", "bag", "ankle_boot")
RECT_FRACTION = 0.3  # share of images that are not square
JPEG_QUALITY = 92
YAML_HEADER = (
    "# Ocellus synth-detect: a SYNTHETIC stand-in for your own detection data.\n"
    "# Fashion-MNIST garments pasted onto scikit-image/scikit-learn sample photos.\n"
    "# Replace it with your own images and YOLO labels in this same layout.\n"
)


def _image_size(img_size: int, rng: np.random.Generator) -> tuple[int, int]:
    """``(W, H)``: square most of the time, else a random aspect ratio with long side img_size."""
    if rng.random() >= RECT_FRACTION:
        return img_size, img_size
    short = 2 * round(img_size * rng.uniform(0.56, 0.85) / 2)
    return (img_size, short) if rng.random() < 0.5 else (short, img_size)


def _check_args(images: int, img_size: int, val_fraction: float, classes: Sequence[str]) -> None:
    if images < 1:
        raise DatasetError(f"images must be >= 1, got {images}")
    if img_size < 64:
        raise DatasetError(f"img_size must be >= 64 pixels, got {img_size}")
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}")
    unknown = [c for c in classes if c not in FOLDER_NAMES]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise DatasetError(
            f"classes must be distinct Fashion-MNIST names from {list(FOLDER_NAMES)}, "
            f"got {list(classes)}"
        )


def split_sizes(images: int, val_fraction: float) -> tuple[int, int]:
    """``(n_train, n_val)``; val gets ``round(images * val_fraction)`` images, train >= 1."""
    n_val = min(images - 1, round(images * val_fraction))
    return images - n_val, n_val


def generate_samples(
    *,
    images: int = 200,
    seed: int = 0,
    img_size: int = 416,
    val_fraction: float = 0.2,
    classes: Sequence[str] = DEFAULT_CLASSES,
    source: Path = DEFAULT_SOURCE,
) -> Iterator[tuple[str, int, Sample]]:
    """Render the samples that :func:`synth_detect` writes, without writing them.

    Image ``i`` depends only on ``(seed, i)`` and its split, so it is reproducible alone.

    Yields:
        ``(split, index, sample)`` with split ``"train"`` for the first images and
        ``"val"`` for the last ``round(images * val_fraction)``.

    Raises:
        DatasetError: Bad arguments, or the Fashion-MNIST files or photos are missing.
    """
    _check_args(images, img_size, val_fraction, classes)
    ids = [FOLDER_NAMES.index(c) for c in classes]
    photos = load_backgrounds()
    n_train, _ = split_sizes(images, val_fraction)
    pools: dict[str, list[np.ndarray]] = {}
    for split, fm_split in (("train", "train"), ("val", "test")):
        x, y = load_split(fm_split, source=source)  # (N, 28, 28), (N,)
        pools[split] = [x[y == i] for i in ids]
    for i in range(images):
        split = "train" if i < n_train else "val"
        rng = np.random.default_rng([seed, i])
        size = _image_size(img_size, rng)
        yield split, i, render_sample(photos, pools[split], size, rng)


def yolo_rows(sample: Sample) -> list[str]:
    """YOLO label rows ``"class cx cy w h"`` (normalised to [0, 1]) for one sample."""
    height, width = sample.image.shape[:2]
    rows = []
    for cls, (x0, y0, x1, y1) in zip(sample.classes, sample.boxes, strict=True):
        cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
        w, h = (x1 - x0) / width, (y1 - y0) / height
        rows.append(f"{int(cls)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return rows


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Create empty image/label folders, refusing to mix with an earlier data set."""
    targets = [out / "images", out / "labels", out / "data.yaml"]
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise DatasetError(
            f"{existing[0]} already exists; expected a fresh output folder "
            "(pass overwrite=True / --overwrite to replace it)"
        )
    for p in existing:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    for kind in ("images", "labels"):
        for split in ("train", "val"):
            (out / kind / split).mkdir(parents=True, exist_ok=True)


def synth_detect(
    out: Path,
    *,
    images: int = 200,
    seed: int = 0,
    img_size: int = 416,
    val_fraction: float = 0.2,
    classes: Sequence[str] = DEFAULT_CLASSES,
    source: Path = DEFAULT_SOURCE,
    overwrite: bool = False,
) -> Path:
    """Write the synth-detect data set (a stand-in for your own data) in YOLO layout.

    Args:
        out: Output folder (created).
        images: Total number of images, train and val together.
        seed: Seed; the same arguments write the same bytes.
        img_size: Longest side of every image in pixels (>= 64).
        val_fraction: Share of the images put in ``val``.
        classes: Fashion-MNIST folder names to use as object classes; their order gives
            the class ids. Defaults to :data:`DEFAULT_CLASSES`.
        source: Folder with the Fashion-MNIST IDX files.
        overwrite: Replace an existing ``images/``, ``labels/`` and ``data.yaml``.

    Returns:
        Path of the written ``data.yaml``.

    Raises:
        DatasetError: Bad arguments, missing sources, or ``out`` already holds a data set
            and ``overwrite`` is False.
    """
    out = Path(out)
    # Build the generator (and check arguments/sources) before touching `out`.
    samples = generate_samples(
        images=images,
        seed=seed,
        img_size=img_size,
        val_fraction=val_fraction,
        classes=classes,
        source=source,
    )
    first = next(samples)
    _prepare_out(out, overwrite)
    counts = {"train": 0, "val": 0, "objects": 0}
    for split, i, sample in itertools.chain([first], samples):
        stem = f"{i:05d}"
        Image.fromarray(sample.image).save(
            # 4:4:4 chroma keeps the colour edges of small objects sharp.
            out / "images" / split / f"{stem}.jpg", quality=JPEG_QUALITY, subsampling=0
        )
        rows = yolo_rows(sample)
        (out / "labels" / split / f"{stem}.txt").write_text("".join(r + "\n" for r in rows))
        counts[split] += 1
        counts["objects"] += len(rows)
    data = {
        "path": str(out.resolve()),
        "train": "images/train",
        "val": "images/val",
        "nc": len(classes),
        "names": dict(enumerate(classes)),
    }
    yaml_path = out / "data.yaml"
    yaml_path.write_text(YAML_HEADER + yaml.safe_dump(data, sort_keys=False))
    logger.info("wrote synth-detect to %s: %s", out, counts)
    return yaml_path
