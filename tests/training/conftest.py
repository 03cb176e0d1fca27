"""Tiny generated data sets and the tiny exports trained on them, shared by the run.

Each is built once per session: several tests read the same export (its
manifest, its weights as an --init-from source) instead of training their own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from models.export import Manifest


def _shapes_tree(root: Path, per_class: int = 12) -> Path:
    """Three visually distinct classes of generated 48x48 images, without train/val folders."""
    rng = np.random.default_rng(0)
    for name in ("red_square", "green_disc", "blue_stripes"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (48, 48, 3), dtype=np.uint8)
            if name == "red_square":
                a = rng.integers(4, 20)
                img[a:a + 24, a:a + 24, 0] = 230
            elif name == "green_disc":
                yy, xx = np.mgrid[:48, :48]
                img[(yy - 24) ** 2 + (xx - 24) ** 2 < rng.integers(80, 300), 1] = 230
            else:
                img[:, :: rng.integers(4, 8), 2] = 230
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def _rectangles_yaml(root: Path, n: int = 8) -> Path:
    """A YOLO set of 80x64 images with one filled rectangle each (class = colour)."""
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            cls = i % 2
            im = Image.new("RGB", (80, 64), (90, 90, 90))
            x1, y1 = 5 + 4 * i, 6 + 3 * i
            ImageDraw.Draw(im).rectangle([x1, y1, x1 + 29, y1 + 24],
                                         fill=(250, 30, 30) if cls else (30, 30, 250))
            im.save(root / "images" / split / f"{i}.png")
            cx, cy = (x1 + 15) / 80, (y1 + 12.5) / 64
            (root / "labels" / split / f"{i}.txt").write_text(
                f"{cls} {cx:.6f} {cy:.6f} {30 / 80:.6f} {25 / 64:.6f}\n")
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train",
                                    "val": "images/val", "names": ["blue", "red"]}))
    return data


@pytest.fixture(scope="session")
def make_shapes_tree():
    """`_shapes_tree(root, per_class=12) -> root`."""
    return _shapes_tree


@pytest.fixture(scope="session")
def make_rectangles_yaml():
    """`_rectangles_yaml(root, n=8) -> root / "data.yaml"`."""
    return _rectangles_yaml


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    """A resnet18 classifier (from scratch, 32 px) trained 1 epoch on 18 shapes."""
    from training.classify.train import get_args_parser, main

    tmp = tmp_path_factory.mktemp("tiny-classifier")
    data = _shapes_tree(tmp / "data", per_class=6)
    out = tmp / "export"
    return out, main(get_args_parser().parse_args([
        "--data", str(data), "--out", str(out), "--backbone", "resnet18", "--weights", "none",
        "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--no-progress"]))


@pytest.fixture(scope="session")
def tiny_detector(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    """A resnet18 detector (from scratch, 64 px, width 16) trained 1 epoch on 8 rectangles."""
    from training.detection.train import get_args_parser, main

    tmp = tmp_path_factory.mktemp("tiny-detector")
    data = _rectangles_yaml(tmp / "data")
    out = tmp / "export"
    return out, main(get_args_parser().parse_args([
        "--data", str(data), "--out", str(out), "--backbone", "resnet18", "--weights", "none",
        "--img-size", "64", "--width", "16", "--epochs", "1", "--batch-size", "4",
        "--no-progress"]))
