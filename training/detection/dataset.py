"""YOLO-format detection data sets (the Ultralytics layout).

DATA.yaml::

    path: /data/garments        # root; relative paths are relative to the yaml's folder
    train: images/train          # a folder of images, a .txt list of images, or a list of those
    val: images/val
    names: [shirt, bag]          # or {0: shirt, 1: bag}

Each image ``.../images/<split>/x.jpg`` has ``.../labels/<split>/x.txt`` with one
row ``class cx cy w h`` per object (centre and size normalised to [0, 1]); a
missing label file means an image with no objects. Every label file is checked
when the data set is opened, so a bad row fails at once, naming file and line.

Labels refer to the upright image (EXIF orientation applied), as in COCO tooling
and Ultralytics; images are read by `training.images.read_image`.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch.utils.data import Dataset
from torchvision.ops import box_convert

from models.detection.letterbox import boxes_to_letterbox, letterbox
from models.errors import DatasetError
from models.imaging import IMAGE_SUFFIXES
from training.detection.augment import DetectionAugment
from training.images import read_image

log = logging.getLogger(__name__)

_COORD_TOLERANCE = 0.01  # Normalised coordinates a little outside [0, 1] are clipped.


@dataclass(frozen=True)
class DetectionDataSpec:
    """A parsed DATA.yaml: the images of each split and the class names."""

    yaml_path: Path
    root: Path
    train: list[Path]
    val: list[Path]
    names: list[str]


def _names(raw: object, yaml_path: Path) -> list[str]:
    if isinstance(raw, list) and raw:
        return [str(n) for n in raw]
    if isinstance(raw, dict) and raw:
        try:
            keys = sorted(int(k) for k in raw)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{yaml_path}: 'names' keys must be class indices, got "
                               f"{list(raw)}") from exc
        if keys != list(range(len(keys))):
            raise DatasetError(f"{yaml_path}: 'names' keys must be 0..{len(keys) - 1}, got {keys}")
        by_int = {int(k): str(v) for k, v in raw.items()}
        return [by_int[k] for k in keys]
    raise DatasetError(f"{yaml_path}: expected 'names' as a non-empty list or {{index: name}} "
                       f"mapping, got {raw!r}")


def _split_images(entry: object, root: Path, key: str, yaml_path: Path) -> list[Path]:
    if entry is None:
        return []
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for e in entries:
        p = Path(str(e))
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            images += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file() and p.suffix == ".txt":
            for line in p.read_text().splitlines():
                if line.strip():
                    f = Path(line.strip())
                    images.append(f if f.is_absolute() else root / f)
        else:
            raise DatasetError(f"{yaml_path}: '{key}' entry {e!r} is neither a folder nor a "
                               f".txt list of images (looked for {p})")
    return images


def load_data_yaml(path: str | Path, *, check_labels: bool = True) -> DetectionDataSpec:
    """Parse a DATA.yaml and, by default, validate every label file it points to.

    Raises:
        DatasetError: The yaml, a split, or a label row is missing or malformed.
    """
    yaml_path = Path(path)
    if not yaml_path.is_file():
        raise DatasetError(f"data set description {yaml_path} does not exist")
    try:
        cfg = yaml.safe_load(yaml_path.read_text())
    except yaml.YAMLError as exc:
        raise DatasetError(f"{yaml_path} is not valid YAML: {exc}") from exc
    if not isinstance(cfg, dict) or "train" not in cfg or "names" not in cfg:
        raise DatasetError(f"{yaml_path}: expected a mapping with 'train', 'val' and 'names'")
    root = Path(str(cfg.get("path") or "."))
    root = root if root.is_absolute() else (yaml_path.parent / root)
    names = _names(cfg["names"], yaml_path)
    if "nc" in cfg and int(cfg["nc"]) != len(names):
        raise DatasetError(f"{yaml_path}: nc is {cfg['nc']} but {len(names)} names are given")
    spec = DetectionDataSpec(yaml_path, root, _split_images(cfg["train"], root, "train", yaml_path),
                             _split_images(cfg.get("val"), root, "val", yaml_path), names)
    if not spec.train:
        raise DatasetError(f"{yaml_path}: the train split has no images")
    if check_labels:
        for img in spec.train + spec.val:
            read_labels(label_path_for(img), len(names))
    return spec


def label_path_for(image: Path) -> Path:
    """``.../images/<split>/x.jpg`` → ``.../labels/<split>/x.txt`` (last 'images' part)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    else:
        return image.with_suffix(".txt")
    return Path(*parts).with_suffix(".txt")


def read_labels(path: Path, num_classes: int) -> torch.Tensor:
    """A YOLO label file → ``(N, 5)`` float ``[class, cx, cy, w, h]`` (normalised).

    Raises:
        DatasetError: A row is malformed or its class is out of range; the
            message names the file and the 1-based line.
    """
    if not path.is_file():
        return torch.zeros((0, 5))
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        fields = line.split()
        if len(fields) != 5:
            raise DatasetError(f"{where}: expected 5 values 'class cx cy w h', got "
                               f"{len(fields)}: {line.strip()!r}")
        try:
            values = [float(f) for f in fields]
        except ValueError as exc:
            raise DatasetError(f"{where}: expected numbers 'class cx cy w h', got "
                               f"{line.strip()!r}") from exc
        cls = values[0]
        if cls != int(cls) or not 0 <= cls < num_classes:
            raise DatasetError(f"{where}: class {fields[0]} is out of range; expected an "
                               f"integer in [0, {num_classes - 1}]")
        cx, cy, w, h = values[1:]
        lo, hi = -_COORD_TOLERANCE, 1 + _COORD_TOLERANCE
        if not (all(lo <= v <= hi for v in (cx, cy, w, h)) and w > 0 and h > 0):
            raise DatasetError(f"{where}: expected normalised cx cy w h in [0, 1] with w, h > 0, "
                               f"got {line.strip()!r}")
        rows.append(values)
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)


def yolo_to_xyxy(rows: torch.Tensor, width: int, height: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Label rows ``(N, 5)`` [class, cx, cy, w, h] → xyxy pixel boxes ``(N, 4)`` and classes.

    `width` and `height` are the upright image's; boxes are clipped to it.
    """
    size = rows.new_tensor([width, height, width, height])
    boxes = box_convert(rows[:, 1:], "cxcywh", "xyxy") * size
    return torch.minimum(boxes.clamp(min=0), size), rows[:, 0].long()


class YoloDetectionDataset(Dataset):
    """Images and boxes of one split, letterboxed (and augmented) to ``img_size``.

    Items are ``(image uint8 (3, S, S), targets (N, 5) [class, x1, y1, x2, y2])``
    with boxes in the pixels of the S x S input. `load` gives the decoded image
    and its boxes, which evaluation uses: decoded for input side S, as the
    service decodes (a large JPEG at reduced scale), and upright.
    """

    def __init__(self, images: list[Path], num_classes: int, *, img_size: int,
                 augment: DetectionAugment | None = None, cache_images: bool = True) -> None:
        self.images, self.num_classes, self.img_size = images, num_classes, img_size
        self.augment = augment
        self.labels = [read_labels(label_path_for(p), num_classes) for p in images]
        self._cache: dict[int, torch.Tensor] | None = {} if cache_images else None

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Upright uint8 image ``(3, H, W)``, its xyxy boxes ``(N, 4)``, labels ``(N,)``."""
        if self._cache is not None and i in self._cache:
            image = self._cache[i]
        else:
            image = read_image(self.images[i], target_size=self.img_size)
            if self._cache is not None:
                self._cache[i] = image
        boxes, labels = yolo_to_xyxy(self.labels[i], image.shape[-1], image.shape[-2])
        return image, boxes, labels

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.augment is None:
            image, boxes, labels = self.load(i)
            image, p = letterbox(image, self.img_size)
            boxes = boxes_to_letterbox(boxes, p)
        else:
            others = [random.randrange(len(self)) for _ in range(3)]
            image, boxes, labels = self.augment(self.load(i),
                                                lambda: [self.load(j) for j in others])
        return image, torch.cat([labels[:, None].float(), boxes], dim=1)


def detection_collate(batch: list[tuple[torch.Tensor, torch.Tensor]]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """→ uint8 images ``(B, 3, S, S)``, targets ``(M, 6)`` [batch_idx, class, x1, y1, x2, y2]."""
    images = torch.stack([im for im, _ in batch])
    targets = [torch.cat([torch.full((t.shape[0], 1), float(i)), t], dim=1)
               for i, (_, t) in enumerate(batch)]
    return images, torch.cat(targets) if targets else torch.zeros((0, 6))
