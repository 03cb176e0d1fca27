"""ImageFolder data sets for classification and their train/val split.

A data directory is an ImageFolder tree (one folder per class), either with
``train/`` and ``val/`` subfolders or without, in which case a stratified split
is drawn with a fixed seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from models.errors import DatasetError
from models.imaging import IMAGE_SUFFIXES
from models.preprocess import Preprocessing
from training.images import read_image

Sample = tuple[Path, int]


@dataclass
class Splits:
    """The class names and the (path, class index) samples of each split."""

    classes: list[str]
    train: list[Sample]
    val: list[Sample]


def scan_image_folder(root: Path) -> tuple[list[str], list[Sample]]:
    if not root.is_dir():
        raise DatasetError(f"expected an ImageFolder directory at {root}, found nothing there")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root}: expected one sub-folder per class, found none")
    samples = [
        (f, i)
        for i, c in enumerate(classes)
        for f in sorted((root / c).rglob("*"))
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    empty = [c for i, c in enumerate(classes) if not any(t == i for _, t in samples)]
    if empty:
        raise DatasetError(f"{root}: class folder(s) {empty} contain no images "
                           f"(expected files ending in {sorted(IMAGE_SUFFIXES)})")
    return classes, samples


def load_splits(data: str | Path, *, val_fraction: float = 0.2, seed: int = 0) -> Splits:
    """Find the train and val samples of an ImageFolder tree.

    Raises:
        DatasetError: The folder is missing, has no class folders, or train and
            val name different classes.
    """
    data = Path(data)
    if (data / "train").is_dir() and (data / "val").is_dir():
        classes, train = scan_image_folder(data / "train")
        val_classes, val = scan_image_folder(data / "val")
        if val_classes != classes:
            raise DatasetError(f"{data}: train/ has classes {classes} but val/ has {val_classes}")
        return Splits(classes, train, val)
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in (0, 1), got {val_fraction}")
    classes, samples = scan_image_folder(data)
    rng = random.Random(seed)
    train, val = [], []
    for i in range(len(classes)):
        items = [s for s in samples if s[1] == i]
        rng.shuffle(items)
        n_val = max(1, round(len(items) * val_fraction)) if len(items) > 1 else 0
        val += items[:n_val]
        train += items[n_val:]
    return Splits(classes, train, val)


def train_transform(preprocessing: Preprocessing, *, augment: str = "trivialaugment",
                    crop_scale: float = 0.6) -> Callable[[torch.Tensor], torch.Tensor]:
    """Training augmentation as in torchvision's reference recipe, on uint8 tensors.

    Random resized crop (scale from `crop_scale`: the usual 0.08 is too harsh for the
    short schedules of transfer learning), horizontal flip, then TrivialAugment,
    colour jitter or nothing (`augment`), then the pretrained weights' normalisation.
    """
    ops: list[Callable] = [
        v2.RandomResizedCrop(preprocessing.crop_size, scale=(crop_scale, 1.0),
                             interpolation=preprocessing.interpolation_mode, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if augment == "trivialaugment":
        ops.append(v2.TrivialAugmentWide(interpolation=preprocessing.interpolation_mode))
    elif augment == "colorjitter":
        ops.append(v2.ColorJitter(0.3, 0.3, 0.3, 0.05))
    elif augment != "none":
        raise ValueError(f"augment must be trivialaugment, colorjitter or none, got {augment!r}")
    ops.append(preprocessing.normalize)
    return v2.Compose(ops)


class ImageListDataset(Dataset):
    """(path, target) samples → (transformed image, target).

    `decode_size`: decode as the service does for that side (`decode_image`'s
    ``target_size``), so that an evaluation scores what is served; None decodes in full.
    """

    def __init__(self, samples: list[Sample],
                 transform: Callable[[torch.Tensor], torch.Tensor], *,
                 decode_size: int | None = None) -> None:
        self.samples = samples
        self.transform = transform
        self.decode_size = decode_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[i]
        return self.transform(read_image(path, target_size=self.decode_size)), target
