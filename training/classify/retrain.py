"""The classifier side of ``ocellus retrain``: the frozen evaluation set, and scoring.

Champion and candidate are scored by top-1 and per-class recall through
`ClassificationPredictor`, on one frozen set.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from models.classification.predictor import ClassificationPredictor
from models.errors import DatasetError, RegistryError
from models.export import Manifest
from models.predictor import load_predictor
from training.classify.data import Sample, load_splits, scan_image_folder
from training.classify.evaluate import evaluate_classifier


def eval_set(args: argparse.Namespace, champion: Manifest) -> tuple[list[Sample], str]:
    """The frozen evaluation samples and where they come from.

    ``--eval-data`` (an ImageFolder, or its ``val/``), else the val split of
    ``--data`` drawn with the champion's seed.

    Raises:
        DatasetError: The new data or the evaluation set have other classes.
    """
    labels = list(champion.labels)
    data_classes = load_splits(args.data).classes
    if data_classes != labels:
        raise DatasetError(f"{args.data}: the new data have classes {data_classes}, the "
                           f"served model has {labels}; a retrain keeps the label set")
    t_args = champion.training.get("args", {})
    if args.eval_data is None:
        samples = load_splits(args.data, val_fraction=t_args.get("val_fraction", 0.2),
                              seed=t_args.get("seed", 0)).val
        return samples, f"{args.data} (val split)"
    root = args.eval_data / "val" if (args.eval_data / "val").is_dir() else args.eval_data
    classes, samples = scan_image_folder(root)
    if classes != labels:
        raise DatasetError(f"{root}: the evaluation set has classes {classes}, the model "
                           f"has {labels}")
    return samples, str(root)


def score(path: Path, samples: list[Sample], device: str) -> dict[str, Any]:
    """Top-1, top-5 and per-class precision/recall of an export, as served, and the
    precision it was served at (an int8 export runs its fp32 weights off the CPU)."""
    predictor = load_predictor(path, device=device)
    if not isinstance(predictor, ClassificationPredictor):
        raise RegistryError(f"{path}: expected a classifier, got a {predictor.task!r} model")
    return {**score_predictor(predictor, samples), "precision": predictor.precision}


def score_predictor(predictor: ClassificationPredictor, samples: list[Sample]
                    ) -> dict[str, Any]:
    """`score` of a loaded predictor (``ocellus quantize`` scores one in fp32, then int8)."""
    report = evaluate_classifier(predictor, samples)
    return {k: report[k] for k in ("num_images", "top1", "top5", "per_class")}
