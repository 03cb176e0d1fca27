"""Fashion-MNIST: read the IDX files and export an ImageFolder tree of PNGs.

The source is Debian's ``dataset-fashion-mnist`` package, which installs the four
IDX files (gzipped) under ``/usr/share/datasets/fashion-mnist``. The export writes::

    out/train/<class>/train-01234.png   # drawn from the 60k train split
    out/val/<class>/test-00042.png      # drawn from the 10k test split (default)
    out/test/<class>/test-00000.png     # optional: the whole 10k test split

Class folders use lower-case snake-case versions of the official names
(``FOLDER_NAMES``: ``tshirt_top``, ``trouser``, ..., ``ankle_boot``): safe on every
filesystem, still readable as labels. A file's stem is ``<source split>-<index>``, the
index of the image in its IDX file, so every exported image can be traced back.

Images are 28x28 8-bit grayscale PNGs; the training transforms convert them to RGB.
"""

from __future__ import annotations

import gzip
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from models.errors import DatasetError

logger = logging.getLogger(__name__)

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "apt-get install dataset-fashion-mnist"

#: Official class names, indexed by the IDX label (0..9).
CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
#: Filesystem-safe folder (and label) names, indexed by the IDX label.
FOLDER_NAMES: tuple[str, ...] = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)

Split = Literal["train", "test"]
_FILE_PREFIX: dict[str, str] = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC = 0x00000803  # ubyte data, 3 dimensions (N, rows, cols)
_LABELS_MAGIC = 0x00000801  # ubyte data, 1 dimension (N,)


@dataclass(frozen=True)
class FashionMnistExport:
    """What :func:`export_fashion_mnist` wrote.

    Attributes:
        root: The output folder.
        counts: Number of images written per split folder, e.g. ``{"train": 1000, "val": 500}``.
        classes: The class folder names, in label order (``FOLDER_NAMES``).
    """

    root: Path
    counts: dict[str, int] = field(default_factory=dict)
    classes: tuple[str, ...] = FOLDER_NAMES


def _find_idx(source: Path, stem: str) -> Path:
    """Return ``source/stem`` or ``source/stem.gz``, whichever exists."""
    for candidate in (source / f"{stem}.gz", source / stem):
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"Fashion-MNIST file {stem}[.gz] not found in {source}; expected the four IDX files "
        f"of the Debian package. Install them with `{INSTALL_HINT}` or pass the folder "
        "that holds them."
    )


def read_idx(path: Path, *, expected_magic: int) -> np.ndarray:
    """Parse one IDX file of unsigned bytes (optionally gzipped) with numpy.

    Args:
        path: The ``*-idx?-ubyte`` file, gzipped if its name ends in ``.gz``.
        expected_magic: ``0x803`` for images, ``0x801`` for labels.

    Returns:
        A uint8 array shaped by the header's dimensions, e.g. ``(N, 28, 28)``.

    Raises:
        DatasetError: The file is unreadable, has the wrong magic number or is truncated.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4:
        raise DatasetError(f"IDX file {path} is {len(raw)} bytes long; expected a header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DatasetError(
            f"IDX file {path} has magic number {magic:#010x}; expected {expected_magic:#010x}"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DatasetError(
            f"IDX file {path} is {len(raw)} bytes; its header {dims} implies {expected}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_split(split: Split, *, source: Path = DEFAULT_SOURCE) -> tuple[np.ndarray, np.ndarray]:
    """Load one Fashion-MNIST split.

    Args:
        split: ``"train"`` (60k images) or ``"test"`` (10k images).
        source: Folder holding the IDX files.

    Returns:
        ``(images, labels)``: uint8 arrays of shape ``(N, 28, 28)`` and ``(N,)``.

    Raises:
        DatasetError: A file is missing or malformed; the message gives the apt hint.
    """
    if split not in _FILE_PREFIX:
        raise DatasetError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    source = Path(source)
    prefix = _FILE_PREFIX[split]
    images_path = _find_idx(source, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(source, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, expected_magic=_IMAGES_MAGIC)
    labels = read_idx(labels_path, expected_magic=_LABELS_MAGIC)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"Fashion-MNIST {split}: {images.shape[0]} images of shape {images.shape[1:]} but "
            f"{labels.shape[0]} labels; expected one label per 2-D image"
        )
    if labels.size and int(labels.max()) >= len(CLASS_NAMES):
        raise DatasetError(
            f"Fashion-MNIST {split}: label {int(labels.max())} found; expected 0..9"
        )
    return images, labels


def sample_per_class(
    labels: np.ndarray,
    n: int | None,
    rng: np.random.Generator,
    *,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Pick ``n`` random indices of every class (all of them when ``n`` is None).

    Args:
        labels: ``(N,)`` class ids.
        n: Images per class, or None for every image.
        rng: Source of randomness (the only one, so the pick is reproducible).
        exclude: Indices that must not be picked.

    Returns:
        Sorted indices into ``labels``.

    Raises:
        DatasetError: A class has fewer than ``n`` eligible images.
    """
    eligible = np.ones(labels.shape[0], dtype=bool)
    if exclude is not None:
        eligible[exclude] = False
    picked = []
    for cls in range(len(CLASS_NAMES)):
        pool = np.flatnonzero((labels == cls) & eligible)
        if n is None:
            picked.append(pool)
            continue
        if n > pool.size:
            raise DatasetError(
                f"asked for {n} images of class {FOLDER_NAMES[cls]!r}; only {pool.size} available"
            )
        picked.append(rng.choice(pool, size=n, replace=False))
    return np.sort(np.concatenate(picked))


def _prepare_dirs(out: Path, splits: Sequence[str], overwrite: bool) -> None:
    """Create empty ``out/<split>/<class>`` folders, refusing to mix with an old export."""
    for split in splits:
        split_dir = out / split
        if split_dir.exists() and any(split_dir.iterdir()):
            if not overwrite:
                raise DatasetError(
                    f"{split_dir} already exists and is not empty; expected a fresh output "
                    "folder (pass overwrite=True / --overwrite to replace it)"
                )
            shutil.rmtree(split_dir)
        for name in FOLDER_NAMES:
            (split_dir / name).mkdir(parents=True, exist_ok=True)


def _write_pngs(
    out_dir: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, prefix: str
) -> int:
    """Write ``images[indices]`` as grayscale PNGs into ``out_dir/<class>/``."""
    for idx in indices:
        path = out_dir / FOLDER_NAMES[labels[idx]] / f"{prefix}-{idx:05d}.png"
        # (28, 28) uint8 -> mode "L"; compress_level=1 is ~3x faster than the default
        # and these files are tiny anyway.
        Image.fromarray(images[idx], mode="L").save(path, compress_level=1)
    return int(indices.size)


def export_fashion_mnist(
    out: Path,
    *,
    per_class: int | None = 100,
    val_per_class: int | None = 50,
    val_from: Split = "test",
    include_test: bool = False,
    seed: int = 0,
    source: Path = DEFAULT_SOURCE,
    overwrite: bool = False,
) -> FashionMnistExport:
    """Export Fashion-MNIST as an ImageFolder tree of 28x28 grayscale PNGs.

    Writes ``out/train/<class>/`` and ``out/val/<class>/``, and ``out/test/<class>/``
    (all 10k test images) when ``include_test`` is set. The picks depend only on
    ``seed`` and the counts, so the same call writes the same files.

    Args:
        out: Output folder (created).
        per_class: Train images per class from the 60k train split; None for all 6000.
        val_per_class: Validation images per class; None for all of the source split.
        val_from: ``"test"`` draws val from the 10k test split (never overlaps train, but
            is a subset of ``out/test``); ``"train"`` draws it from train-split images not
            picked for train, which keeps the test split untouched for a final benchmark.
        include_test: Also write the whole 10k test split to ``out/test``.
        seed: Seed of the random picks.
        source: Folder with the IDX files of the ``dataset-fashion-mnist`` package.
        overwrite: Replace existing non-empty split folders instead of refusing.

    Returns:
        A :class:`FashionMnistExport` with the number of images per split.

    Raises:
        DatasetError: The IDX files are missing or malformed, a count exceeds what a
            class holds, or ``out`` already holds an export and ``overwrite`` is False.
    """
    for name, value in (("per_class", per_class), ("val_per_class", val_per_class)):
        if value is not None and value < 0:
            raise DatasetError(f"{name} must be >= 0 or None, got {value}")
    if val_from not in _FILE_PREFIX:
        raise DatasetError(f"val_from must be 'train' or 'test', got {val_from!r}")
    out = Path(out)
    # Load before touching `out`, so a missing package leaves no half-made tree.
    train_x, train_y = load_split("train", source=source)
    test_x, test_y = load_split("test", source=source)  # 10k images: cheap to always load

    splits = ["train", "val"] + (["test"] if include_test else [])
    _prepare_dirs(out, splits, overwrite)

    # Independent streams per split: changing per_class does not reshuffle val.
    train_idx = sample_per_class(train_y, per_class, np.random.default_rng([seed, 0]))
    counts = {"train": _write_pngs(out / "train", train_x, train_y, train_idx, "train")}
    val_rng = np.random.default_rng([seed, 1])
    if val_from == "test":
        val_idx = sample_per_class(test_y, val_per_class, val_rng)
        counts["val"] = _write_pngs(out / "val", test_x, test_y, val_idx, "test")
    else:
        val_idx = sample_per_class(train_y, val_per_class, val_rng, exclude=train_idx)
        counts["val"] = _write_pngs(out / "val", train_x, train_y, val_idx, "train")
    if include_test:
        all_idx = np.arange(test_y.shape[0])
        counts["test"] = _write_pngs(out / "test", test_x, test_y, all_idx, "test")
    logger.info("exported Fashion-MNIST to %s: %s", out, counts)
    return FashionMnistExport(root=out, counts=counts)
