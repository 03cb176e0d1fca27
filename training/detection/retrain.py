"""The detector side of ``ocellus retrain``: the frozen evaluation split, and scoring.

Champion and candidate are scored by COCO mAP50-95 through `DetectionPredictor`
on one frozen split, with per-class recall at the served default operating point.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from models.detection.predictor import DetectionPredictor
from models.errors import DatasetError, RegistryError
from models.export import Manifest
from models.predictor import load_predictor
from training.detection.dataset import load_data_yaml


def _check_names(yaml_path: Path, labels: list[str]) -> None:
    names = load_data_yaml(yaml_path, check_labels=False).names
    if list(names) != labels:
        raise DatasetError(f"{yaml_path}: the data have classes {names}, the served model "
                           f"has {labels}; a retrain keeps the label set (same names, same "
                           f"order)")


def eval_set(args: argparse.Namespace, champion: Manifest) -> tuple[Path, str]:
    """The frozen evaluation split: ``--eval-data``'s val split, else ``--data``'s.

    Raises:
        DatasetError: A DATA.yaml whose class names are not the model's.
        RegistryError: The champion is a detector ``ocellus train detect`` cannot
            fine-tune (an imported one, such as the default NanoDet).
    """
    if champion.architecture.get("name") != "detector":
        raise RegistryError(f"{champion.name} is an imported {champion.architecture.get('name')!r}"
                            f" model, which `ocellus train detect` cannot fine-tune; retrain "
                            f"a detector trained with `ocellus train detect`")
    labels = list(champion.labels)
    _check_names(args.data, labels)
    if args.eval_data is None:
        return args.data, f"{args.data} (val split)"
    _check_names(args.eval_data, labels)
    return args.eval_data, f"{args.eval_data} (val split)"


def score(path: Path, data_yaml: Path, device: str) -> dict[str, Any]:
    """mAP50-95, mAP50 and per-class AP and recall of an export, as served, and the
    precision it was served at (an int8 export runs its fp32 weights off the CPU)."""
    predictor = load_predictor(path, device=device)
    if predictor.task != "detect":
        raise RegistryError(f"{path}: expected a detector, got a {predictor.task!r} model")
    return {**score_predictor(predictor, data_yaml), "precision": predictor.precision}


def score_predictor(predictor: DetectionPredictor, data_yaml: Path) -> dict[str, Any]:
    """`score` of a loaded predictor (``ocellus quantize`` scores one in fp32, then int8)."""
    from training.detection.evaluate import evaluate_data

    r = evaluate_data(predictor, data_yaml, split="val")
    per_class = {name: {"recall": recall, "ap": r["per_class_ap"].get(name, 0.0)}
                 for name, recall in r["per_class_recall"].items()}
    return {"num_images": r["num_images"], "num_objects": r["num_objects"],
            "map50_95": r["map50_95"], "map50": r["map50"], "per_class": per_class,
            "recall_at": r["recall_at"]}
