"""The classifier side of ``ocellus retrain``: fit a candidate, score an export.

The candidate is fine-tuned from the champion's weights with the champion's own
training settings (its manifest's ``training.args``); both are scored by top-1
and per-class recall through `ClassificationPredictor`, on one frozen set.
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
from training.retrain import fit_argv

# Champion settings a retrain inherits (names of `ocellus train classify` options).
_INHERITED = ("backbone", "mode", "trainable_stages", "epochs", "batch_size", "img_size", "lr",
              "backbone_lr_scale", "weight_decay", "warmup_epochs", "label_smoothing",
              "dropout", "augment", "patience", "val_fraction", "seed")


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


def fit_candidate(champion: Manifest, champion_path: Path, args: argparse.Namespace,
                  out: Path) -> None:
    """`ocellus train classify` from the champion's weights and settings, into `out`."""
    from training.classify.train import get_args_parser, main

    inherited = dict(champion.training.get("args", {}))
    inherited.setdefault("backbone", champion.architecture["args"]["backbone"])
    inherited.setdefault("dropout", champion.architecture["args"].get("dropout", 0.2))
    inherited["img_size"] = champion.preprocessing.get("crop_size", inherited.get("img_size"))
    argv = fit_argv(inherited, _INHERITED, args, champion_path, out)
    main(get_args_parser().parse_args(argv))


def score(path: Path, samples: list[Sample], device: str) -> dict[str, Any]:
    """Top-1, top-5 and per-class precision/recall of an export, as served."""
    predictor = load_predictor(path, device=device)
    if not isinstance(predictor, ClassificationPredictor):
        raise RegistryError(f"{path}: expected a classifier, got a {predictor.task!r} model")
    report = evaluate_classifier(predictor, samples)
    return {k: report[k] for k in ("num_images", "top1", "top5", "per_class")}
