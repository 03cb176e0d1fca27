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

from models.predictor import load_predictor
from models.tasks import get_task, resolve
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


def main(args: argparse.Namespace) -> dict[str, Any]:
    predictor = load_predictor(args.model, device=args.device)
    out = args.out or args.model / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    # The task's own evaluation, named by the task table.
    evaluate_data = resolve(get_task(predictor.task).evaluate)
    report = evaluate_data(predictor, args.data, split=args.split, batch_size=args.batch_size)
    if "confusion_matrix" in report:
        plot_confusion_matrix(report["confusion_matrix"], report["labels"],
                              out / "confusion_matrix.png")
    # The headline figures: every plain number of the report (per-class tables stay in it).
    summary = {k: v for k, v in report.items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    plot_training_curves(predictor.manifest.training.get("history", []),
                         out / "training_curves.png")
    report["model"] = {"name": predictor.manifest.name, "version": predictor.manifest.version,
                       "path": str(args.model)}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(summary, indent=2))
    log.info("wrote %s", out)
    return report
