"""YOLO data sets: parsing, errors that name file and line, COCO conversion."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from PIL import ExifTags, Image, ImageDraw

from models.errors import DatasetError
from training.detection.coco import coco_to_yolo
from training.detection.dataset import (
    YoloDetectionDataset,
    detection_collate,
    label_path_for,
    load_data_yaml,
)


def _write_set(root: Path, labels: dict[str, str], names=("cat", "dog"), size=(64, 48)) -> Path:
    """A YOLO set with one train image per label entry (and the same as val)."""
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for stem, text in labels.items():
            Image.new("RGB", size, (40, 80, 120)).save(root / "images" / split / f"{stem}.jpg")
            (root / "labels" / split / f"{stem}.txt").write_text(text)
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val",
                                    "names": list(names)}))
    return data


def test_valid_set_loads_boxes_in_pixels(tmp_path: Path) -> None:
    data = _write_set(tmp_path, {"a": "0 0.5 0.5 0.5 0.25\n1 0.25 0.75 0.1 0.2\n", "b": ""})
    spec = load_data_yaml(data)
    assert spec.names == ["cat", "dog"] and len(spec.train) == 2 and len(spec.val) == 2
    assert label_path_for(spec.train[0]) == tmp_path / "labels" / "train" / "a.txt"
    ds = YoloDetectionDataset(spec.train, 2, img_size=64)
    image, boxes, labels = ds.load(0)
    assert image.shape == (3, 48, 64)
    assert torch.allclose(boxes, torch.tensor([[16.0, 18, 48, 30], [12.8, 31.2, 19.2, 40.8]]))
    assert labels.tolist() == [0, 1]
    images, targets = detection_collate([ds[0], ds[1]])
    assert images.shape == (2, 3, 64, 64)  # letterboxed: 64x48 → 64x48 + 8 rows pad each side
    assert targets[:, 0].tolist() == [0, 0] and targets[:, 1].tolist() == [0, 1]
    assert torch.allclose(targets[0, 2:], torch.tensor([16.0, 26, 48, 38]))


def test_names_as_mapping(tmp_path: Path) -> None:
    data = _write_set(tmp_path, {"a": "1 0.5 0.5 0.2 0.2\n"})
    cfg = yaml.safe_load(data.read_text())
    cfg["names"] = {0: "cat", 1: "dog"}
    data.write_text(yaml.safe_dump(cfg))
    assert load_data_yaml(data).names == ["cat", "dog"]
    cfg["names"] = {0: "cat", 2: "dog"}
    data.write_text(yaml.safe_dump(cfg))
    with pytest.raises(DatasetError, match="names"):
        load_data_yaml(data)


def test_class_out_of_range_names_file_and_line(tmp_path: Path) -> None:
    data = _write_set(tmp_path, {"ok": "0 0.5 0.5 0.2 0.2\n",
                                 "bad": "0 0.5 0.5 0.2 0.2\n\n2 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(DatasetError) as err:
        load_data_yaml(data)
    msg = str(err.value)
    assert f"{tmp_path / 'labels' / 'train' / 'bad.txt'}:3" in msg
    assert "class 2 is out of range" in msg and "[0, 1]" in msg


@pytest.mark.parametrize(("row", "why"), [("0 0.5 0.5 0.2", "expected 5 values"),
                                          ("0 0.5 x 0.2 0.2", "expected numbers"),
                                          ("1.5 0.5 0.5 0.2 0.2", "out of range"),
                                          ("0 0.5 0.5 1.7 0.2", "normalised"),
                                          ("0 0.5 0.5 0.2 -0.1", "normalised")])
def test_malformed_row_names_file_and_line(tmp_path: Path, row: str, why: str) -> None:
    data = _write_set(tmp_path, {"a": f"1 0.5 0.5 0.2 0.2\n{row}\n"})
    with pytest.raises(DatasetError, match=why) as err:
        load_data_yaml(data)
    assert f"{tmp_path / 'labels' / 'train' / 'a.txt'}:2" in str(err.value)


def test_missing_pieces_raise_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_data_yaml(tmp_path / "nope.yaml")
    data = _write_set(tmp_path, {"a": ""})
    cfg = yaml.safe_load(data.read_text())
    cfg["val"] = "images/test"
    data.write_text(yaml.safe_dump(cfg))
    with pytest.raises(DatasetError, match="'val' entry"):
        load_data_yaml(data)


def test_coco_to_yolo_converts_boxes_and_categories(tmp_path: Path) -> None:
    images = tmp_path / "coco_images"
    images.mkdir()
    Image.new("RGB", (200, 100)).save(images / "one.jpg")
    Image.new("RGB", (50, 80)).save(images / "two.jpg")
    coco = {
        "images": [{"id": 7, "file_name": "one.jpg", "width": 200, "height": 100},
                   {"id": 9, "file_name": "two.jpg", "width": 50, "height": 80}],
        "categories": [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [20, 10, 100, 50], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 10, 20], "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [5, 5, 10, 10], "iscrowd": 1},
        ],
    }
    coco_json = tmp_path / "instances.json"
    coco_json.write_text(json.dumps(coco))
    out = tmp_path / "yolo"
    coco_to_yolo(coco_json, images, out, split="train")
    data = coco_to_yolo(coco_json, images, out, split="val")
    spec = load_data_yaml(data)
    assert spec.names == ["person", "car"]  # categories sorted by COCO id
    assert [p.name for p in spec.train] == ["one.jpg", "two.jpg"] and len(spec.val) == 2
    ds = YoloDetectionDataset(spec.train, 2, img_size=64)
    _, boxes, labels = ds.load(0)
    assert labels.tolist() == [1, 0]  # the crowd box is skipped
    assert torch.allclose(boxes, torch.tensor([[20.0, 10, 120, 60], [0, 0, 10, 20]]), atol=1e-3)
    assert ds.load(1)[1].shape == (0, 4)  # an image without objects


def test_coco_with_unknown_category_is_a_dataset_error(tmp_path: Path) -> None:
    coco = {"images": [{"id": 1, "file_name": "x.jpg", "width": 10, "height": 10}],
            "categories": [{"id": 1, "name": "a"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 1, 1]}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "imgs" / "x.jpg")
    with pytest.raises(DatasetError, match="category_id 5"):
        coco_to_yolo(tmp_path / "c.json", tmp_path / "imgs", tmp_path / "out")


class _RedBoxFinder:
    """A perfect 'detector' of the one red rectangle in an image: it boxes the red pixels
    of the image it is given, so it scores mAP 1 only where the image it sees is
    oriented as the labels are."""

    labels = ["red"]
    input_size = 64
    model = torch.nn.Identity()

    def preprocess(self, image: torch.Tensor, *, original_size: tuple[int, int]):
        red = (image[0].int() > 150) & (image[1].int() < 100)  # (h, w)
        ys, xs = red.nonzero(as_tuple=True)
        sx, sy = original_size[0] / image.shape[-1], original_size[1] / image.shape[-2]
        box = [float(xs.min()) * sx, float(ys.min()) * sy, float(xs.max() + 1) * sx,
               float(ys.max() + 1) * sy]
        return torch.tensor(box), None

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch

    def postprocess(self, outputs: torch.Tensor, metas, **_) -> list:
        return [[SimpleNamespace(box=b.tolist(), score=0.9, class_id=0)] for b in outputs]


def test_labels_refer_to_the_upright_image_in_training_and_in_both_evaluations(
        tmp_path: Path) -> None:
    """A phone photo stored sideways with EXIF Orientation 6 (display: rotate 90° clockwise)."""
    from training.detection.evaluate import evaluate_data
    from training.detection.train import evaluate

    upright = Image.new("RGB", (60, 80), (90, 90, 90))  # portrait, as a viewer shows it
    ImageDraw.Draw(upright).rectangle([10, 40, 29, 69], fill=(230, 20, 20))
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = 6
        # Stored landscape: the upright image turned 90° counter-clockwise.
        upright.transpose(Image.Transpose.ROTATE_90).save(
            tmp_path / "images" / split / "phone.jpg", quality=95, exif=exif)
        (tmp_path / "labels" / split / "phone.txt").write_text(
            f"0 {20 / 60:.6f} {55 / 80:.6f} {20 / 60:.6f} {30 / 80:.6f}\n")
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\n"
                                        "names: [red]\n")
    spec = load_data_yaml(tmp_path / "data.yaml")

    # Training: the image is upright and its box sits on the red pixels, before and
    # after letterboxing.
    ds = YoloDetectionDataset(spec.train, 1, img_size=64)
    image, boxes, _ = ds.load(0)
    assert image.shape == (3, 80, 60)
    assert torch.allclose(boxes, torch.tensor([[10.0, 40, 30, 70]]), atol=1e-3)
    assert image[0, 42:68, 12:28].float().mean() > 180 and image[1, 42:68, 12:28].max() < 100
    letterboxed, targets = ds[0]
    x1, y1, x2, y2 = targets[0, 1:].round().int().tolist()
    inside = letterboxed[:, y1 + 2:y2 - 2, x1 + 2:x2 - 2].float()
    assert inside[0].mean() > 180 and inside[1].mean() < 60

    # Per-epoch evaluation (the fit loop's) and final evaluation (ocellus evaluate's)
    # see the same upright geometry: the red-box finder is exact in both.
    per_epoch = evaluate(_RedBoxFinder(), YoloDetectionDataset(spec.val, 1, img_size=64))
    final = evaluate_data(_RedBoxFinder(), tmp_path / "data.yaml")
    assert per_epoch["map50_95"] == final["map50_95"] == pytest.approx(1.0)
