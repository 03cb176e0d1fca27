"""Convert a COCO detection JSON into the YOLO layout `train_detector` reads."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import yaml

from models.errors import DatasetError

log = logging.getLogger(__name__)


def _load(coco_json: Path) -> dict:
    if not coco_json.is_file():
        raise DatasetError(f"COCO annotation file {coco_json} does not exist")
    try:
        data = json.loads(coco_json.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{coco_json} is not valid JSON: {exc}") from exc
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{coco_json}: expected a list under {key!r}")
    return data


def coco_to_yolo(coco_json: Path, images_dir: Path, out: Path, *, split: str = "train",
                 copy_images: bool = True) -> Path:
    """Write one COCO split as ``out/images/<split>`` + ``out/labels/<split>``.

    Categories become classes 0..K-1 in order of COCO id; crowd annotations
    are skipped; boxes ``[x, y, w, h]`` in pixels become normalised
    ``class cx cy w h`` rows; images without annotations get an empty label
    file. ``out/data.yaml`` is (re)written to list every split converted so
    far; call once per split (e.g. ``train`` then ``val``).

    Args:
        coco_json: The COCO instances JSON.
        images_dir: The folder its ``file_name`` entries are relative to.
        out: The YOLO data set root.
        split: The split name to write.
        copy_images: Copy the images (True) or symlink them (False).

    Returns:
        The path of ``out/data.yaml``.

    Raises:
        DatasetError: The JSON is malformed, refers to an unknown category or image,
            or an image file is missing.
    """
    coco_json, images_dir, out = Path(coco_json), Path(images_dir), Path(out)
    data = _load(coco_json)
    cats = sorted(data["categories"], key=lambda c: c["id"])
    cls_of = {c["id"]: i for i, c in enumerate(cats)}
    names = [str(c["name"]) for c in cats]
    rows: dict[int, list[str]] = {img["id"]: [] for img in data["images"]}
    sizes = {img["id"]: (img["width"], img["height"]) for img in data["images"]}
    for ann in data["annotations"]:
        where = f"{coco_json}: annotation {ann.get('id')}"
        if ann.get("iscrowd", 0):
            continue
        if ann.get("category_id") not in cls_of:
            raise DatasetError(f"{where} has category_id {ann.get('category_id')}; expected one "
                               f"of {sorted(cls_of)}")
        if ann.get("image_id") not in rows:
            raise DatasetError(f"{where} refers to unknown image_id {ann.get('image_id')}")
        x, y, w, h = (float(v) for v in ann["bbox"])
        iw, ih = sizes[ann["image_id"]]
        if w <= 0 or h <= 0:
            log.warning("%s has an empty box %s; skipped", where, ann["bbox"])
            continue
        rows[ann["image_id"]].append(
            f"{cls_of[ann['category_id']]} {(x + w / 2) / iw:.6f} {(y + h / 2) / ih:.6f} "
            f"{w / iw:.6f} {h / ih:.6f}")

    img_out, lab_out = out / "images" / split, out / "labels" / split
    img_out.mkdir(parents=True, exist_ok=True)
    lab_out.mkdir(parents=True, exist_ok=True)
    for img in data["images"]:
        src = images_dir / img["file_name"]
        if not src.is_file():
            raise DatasetError(f"{coco_json}: image {img['file_name']} not found in {images_dir}")
        dst = img_out / Path(img["file_name"]).name
        if copy_images:
            shutil.copy2(src, dst)
        elif not dst.exists():
            dst.symlink_to(src.resolve())
        (lab_out / dst.with_suffix(".txt").name).write_text(
            "".join(r + "\n" for r in rows[img["id"]]))

    splits = sorted(p.name for p in (out / "images").iterdir() if p.is_dir())
    cfg = {"path": ".", "train": "images/train" if "train" in splits else f"images/{split}",
           "names": names}
    if "val" in splits:
        cfg["val"] = "images/val"
    yaml_path = out / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return yaml_path
