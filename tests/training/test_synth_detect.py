"""synth-detect: YOLO layout, label format, determinism and boxes that hug the objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from models.errors import DatasetError
from training.data.fashion_mnist import DEFAULT_SOURCE
from training.data.synth_detect import (
    DEFAULT_CLASSES,
    generate_samples,
    synth_detect,
    yolo_rows,
)
from training.data.synth_render import MAX_OBJECTS, load_backgrounds

pytestmark = pytest.mark.skipif(
    not DEFAULT_SOURCE.is_dir(), reason="needs `apt-get install dataset-fashion-mnist`"
)

ARGS = {"images": 12, "seed": 3, "img_size": 192, "val_fraction": 0.25}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_detect(tmp_path_factory.mktemp("synth") / "ds", **ARGS)


def _label_files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*.txt"))}


def test_layout_and_data_yaml(dataset: Path) -> None:
    root = dataset.parent
    assert dataset.name == "data.yaml"
    assert "stand-in for your own" in dataset.read_text()
    data = yaml.safe_load(dataset.read_text())
    assert data["path"] == str(root.resolve())
    assert (data["train"], data["val"]) == ("images/train", "images/val")
    assert data["names"] == dict(enumerate(DEFAULT_CLASSES))
    assert data["nc"] == len(DEFAULT_CLASSES)
    sizes = set()
    for split, count in (("train", 9), ("val", 3)):
        jpgs = sorted((root / data[split]).glob("*.jpg"))
        assert len(jpgs) == count
        labels = sorted((root / "labels" / split).glob("*.txt"))
        assert [p.stem for p in labels] == [p.stem for p in jpgs]
        for jpg in jpgs:
            with Image.open(jpg) as im:
                assert im.format == "JPEG" and im.mode == "RGB"
                assert max(im.size) == ARGS["img_size"]
                sizes.add(im.size)
    assert any(w != h for w, h in sizes), "expected some rectangular images"


def test_label_rows_are_well_formed(dataset: Path) -> None:
    root = dataset.parent
    n_objects = []
    for txt in (root / "labels").rglob("*.txt"):
        rows = txt.read_text().splitlines()
        n_objects.append(len(rows))
        for row in rows:
            fields = row.split(" ")
            assert len(fields) == 5, row
            assert fields[0].isdigit() and int(fields[0]) < len(DEFAULT_CLASSES)
            cx, cy, w, h = map(float, fields[1:])
            assert 0 < w <= 1 and 0 < h <= 1, row
            assert cx - w / 2 >= 0 and cx + w / 2 <= 1 + 1e-6, row
            assert cy - h / 2 >= 0 and cy + h / 2 <= 1 + 1e-6, row
    assert all(1 <= n <= MAX_OBJECTS for n in n_objects)
    assert max(n_objects) > 1


def test_same_seed_same_bytes_other_seed_other_labels(dataset: Path, tmp_path: Path) -> None:
    again = synth_detect(tmp_path / "again", **ARGS).parent
    root = dataset.parent
    for jpg in root.rglob("*.jpg"):
        assert (again / jpg.relative_to(root)).read_bytes() == jpg.read_bytes()
    assert _label_files(again) == _label_files(root)
    other = synth_detect(tmp_path / "other", **{**ARGS, "seed": 4}).parent
    assert _label_files(other) != _label_files(root)


def test_boxes_hug_the_pasted_objects() -> None:
    """Outside the boxes the photo is untouched; every box edge touches a pasted pixel."""
    for _, _, sample in generate_samples(**ARGS):
        changed = (sample.image != sample.background).any(axis=2)  # (H, W)
        inside = np.zeros_like(changed)
        for x0, y0, x1, y1 in sample.boxes:
            assert 0 <= x0 < x1 <= changed.shape[1] and 0 <= y0 < y1 <= changed.shape[0]
            inside[y0:y1, x0:x1] = True
            box = changed[y0:y1, x0:x1]
            # Tight: the first/last row and column of the box each hold object pixels.
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
            assert box.mean() > 0.3  # garments fill a good part of their box
        assert not changed[~inside].any()
        assert changed.any()


def test_files_are_the_rendered_samples(dataset: Path) -> None:
    root = dataset.parent
    for split, i, sample in generate_samples(**ARGS):
        stem = f"{i:05d}"
        rows = (root / "labels" / split / f"{stem}.txt").read_text().splitlines()
        assert rows == yolo_rows(sample)
        decoded = np.asarray(Image.open(root / "images" / split / f"{stem}.jpg"), np.float32)
        assert decoded.shape == sample.image.shape
        assert np.abs(decoded - sample.image).mean() < 5.0  # JPEG noise only


def test_yolo_rows_normalise_pixel_boxes() -> None:
    _, _, sample = next(generate_samples(**ARGS))
    h, w = sample.image.shape[:2]
    for row, cls, (x0, y0, x1, y1) in zip(
        yolo_rows(sample), sample.classes, sample.boxes, strict=True
    ):
        c, cx, cy, bw, bh = row.split()
        assert int(c) == cls
        assert float(cx) * w == pytest.approx((x0 + x1) / 2, abs=1e-3)
        assert float(bh) * h == pytest.approx(y1 - y0, abs=1e-3)


def test_class_subset_sets_names_and_ids(tmp_path: Path) -> None:
    data_yaml = synth_detect(tmp_path, images=6, img_size=128, classes=("bag", "sandal"))
    assert yaml.safe_load(data_yaml.read_text())["names"] == {0: "bag", 1: "sandal"}
    rows = [row for txt in tmp_path.rglob("*.txt") for row in txt.read_text().splitlines()]
    assert rows and {row.split()[0] for row in rows} <= {"0", "1"}


def test_backgrounds_are_real_colour_photos() -> None:
    photos = load_backgrounds()
    assert len(photos) >= 10
    assert all(p.ndim == 3 and p.shape[2] == 3 and min(p.shape[:2]) >= 256 for p in photos)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"images": 0}, "images must be >= 1"),
        ({"img_size": 32}, "img_size must be >= 64"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
        ({"classes": ("bag", "hat")}, "classes must be distinct Fashion-MNIST names"),
    ],
)
def test_bad_arguments_raise_dataset_error(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        synth_detect(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    synth_detect(tmp_path, images=4, img_size=96)
    with pytest.raises(DatasetError, match="already exists"):
        synth_detect(tmp_path, images=2, img_size=96)
    synth_detect(tmp_path, images=2, img_size=96, overwrite=True)
    assert len(list((tmp_path / "images").rglob("*.jpg"))) == 2
