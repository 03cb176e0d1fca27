"""``ocellus evaluate``: score an export on a data set, with the served `Predictor`.

Classifiers take an ImageFolder tree (its ``val/`` if present, else the whole
tree); detectors take a YOLO ``data.yaml`` (its ``val`` split). Writes a JSON
report and PNG plots next to it.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from models.predictor import Predictor, load_predictor
from training.plots import plot_confusion_matrix, plot_training_curves

log = logging.getLogger(__name__)


def get_args_parser(prog: str = "ocellus evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="export directory")
    p.add_argument("--data", type=Path, required=True,
                   help="ImageFolder tree (classify) or data.yaml (detect)")
    p.add_argument("--split", default=None, help="sub-folder or yaml split to use")
    p.add_argument("--out", type=Path, default=None,
                   help="report folder (default: MODEL/evaluation)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    return p


def evaluate_classification_data(predictor: Predictor, data: Path, split: str | None,
                                 batch_size: int) -> dict[str, Any]:
    from training.classify.data import scan_image_folder
    from training.classify.evaluate import evaluate_classifier

    root = data / split if split else (data / "val" if (data / "val").is_dir() else data)
    classes, samples = scan_image_folder(root)
    if classes != predictor.labels:
        # Map folder names onto the model's labels; unknown folders are an error.
        unknown = sorted(set(classes) - set(predictor.labels))
        if unknown:
            from models.errors import DatasetError

            raise DatasetError(f"{root}: class folders {unknown} are not labels of the model "
                               f"({predictor.labels})")
        samples = [(p, predictor.labels.index(classes[t])) for p, t in samples]
    return evaluate_classifier(predictor, samples, batch_size=batch_size)


def main(args: argparse.Namespace) -> dict[str, Any]:
    predictor = load_predictor(args.model, device=args.device)
    out = args.out or args.model / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    if predictor.task == "classify":
        report = evaluate_classification_data(predictor, args.data, args.split, args.batch_size)
        plot_confusion_matrix(report["confusion_matrix"], report["labels"],
                              out / "confusion_matrix.png")
        summary = {k: report[k] for k in ("num_images", "top1", "top5")}
    else:
        from training.detection.evaluate import evaluate_detection_data

        report = evaluate_detection_data(predictor, args.data, split=args.split or "val",
                                         batch_size=args.batch_size)
        summary = {k: report[k] for k in ("num_images", "map50", "map50_95", "precision",
                                          "recall") if k in report}
    plot_training_curves(predictor.manifest.training.get("history", []),
                         out / "training_curves.png")
    report["model"] = {"name": predictor.manifest.name, "version": predictor.manifest.version,
                       "path": str(args.model)}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(summary, indent=2))
    log.info("wrote %s", out)
    return report
