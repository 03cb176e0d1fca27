"""``ocellus retrain``: fine-tune the served model on new data, promote it only if better.

1. Under the registry name's job lock, read the current version (the champion).
2. Fine-tune a candidate from the champion's weights with the champion's own
   training settings (its manifest's ``training.args``) on ``--data``.
3. Evaluate champion and candidate with the same `Predictor` code on the same
   frozen evaluation set (``--eval-data``, else the val split of ``--data``):
   top-1 and per-class recall.
4. Promote (publish, then atomically repoint ``current``) only when the
   candidate's top-1 beats the champion's by ``--min-gain`` and no class falls
   below its floor: ``max(--min-class-recall, champion recall - --max-class-drop)``.
5. Write a JSON report of the decision.

Exit codes: 0 promoted, 3 champion kept, 2 error (bad data, registry locked, ...).
A job killed at any point leaves the registry valid: the candidate is trained
outside it, copied in with a rename, and ``current`` is replaced by a rename.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.errors import DatasetError, RegistryError
from models.export import Manifest
from models.predictor import ClassificationPredictor, Predictor
from models.registry import ModelRegistry, write_text_atomic
from training.classify.data import Sample, load_splits, scan_image_folder
from training.classify.evaluate import evaluate_classifier

log = logging.getLogger(__name__)

EXIT_PROMOTED = 0
EXIT_KEPT = 3
EXIT_ERROR = 2
# Champion settings a retrain inherits (names of `ocellus train classify` options).
_INHERITED = ("backbone", "mode", "trainable_stages", "epochs", "batch_size", "img_size", "lr",
              "backbone_lr_scale", "weight_decay", "warmup_epochs", "label_smoothing",
              "dropout", "augment", "patience", "val_fraction", "seed")


def get_args_parser(prog: str = "ocellus retrain") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--registry", type=Path, required=True, help="model registry folder")
    p.add_argument("--name", required=True, help="registry name of the model to retrain")
    p.add_argument("--data", type=Path, required=True, help="new ImageFolder training data")
    p.add_argument("--eval-data", type=Path, default=None,
                   help="frozen ImageFolder evaluation set; default: the val split of --data")
    p.add_argument("--min-gain", type=float, default=0.0,
                   help="top-1 the candidate must add to the champion's to be promoted")
    p.add_argument("--min-class-recall", type=float, default=0.0,
                   help="absolute floor of every class's recall")
    p.add_argument("--max-class-drop", type=float, default=0.1,
                   help="no class's recall may fall more than this below the champion's")
    p.add_argument("--epochs", type=int, default=None, help="default: the champion's")
    p.add_argument("--lr", type=float, default=None, help="default: the champion's")
    p.add_argument("--time-budget", type=float, default=None, help="training minutes")
    p.add_argument("--report", type=Path, default=None,
                   help="decision report; default REGISTRY/NAME/reports/<time>.json")
    p.add_argument("--dry-run", action="store_true", help="decide and report, never promote")
    p.add_argument("--device", default="cpu")
    return p


def decide(champion: dict[str, Any], candidate: dict[str, Any], *, min_gain: float,
           min_class_recall: float, max_class_drop: float) -> dict[str, Any]:
    """Compare two `evaluate_classifier` results on the same set; pure, so it is unit-tested.

    Returns:
        ``{"promote", "gain", "reasons", "class_floors"}``.
    """
    gain = candidate["top1"] - champion["top1"]
    reasons, floors = [], {}
    if gain < min_gain:
        reasons.append(f"top-1 gain {gain:+.4f} is below --min-gain {min_gain}")
    for label, stats in champion["per_class"].items():
        floor = max(min_class_recall, stats["recall"] - max_class_drop)
        floors[label] = floor
        got = candidate["per_class"][label]["recall"]
        if got < floor - 1e-9:
            reasons.append(f"class {label!r}: recall {got:.4f} is below its floor {floor:.4f}")
    return {"promote": not reasons, "gain": gain, "reasons": reasons, "class_floors": floors}


def _eval_samples(args: argparse.Namespace, labels: list[str], val_fraction: float,
                  seed: int) -> list[Sample]:
    if args.eval_data is None:
        return load_splits(args.data, val_fraction=val_fraction, seed=seed).val
    root = args.eval_data / "val" if (args.eval_data / "val").is_dir() else args.eval_data
    classes, samples = scan_image_folder(root)
    if classes != labels:
        raise DatasetError(f"{root}: the evaluation set has classes {classes}, the model "
                           f"has {labels}")
    return samples


def _fit_argv(champion: Manifest, champion_path: Path, args: argparse.Namespace,
              out: Path) -> list[str]:
    """`ocellus train classify` arguments: the champion's settings, a few overrides."""
    inherited = dict(champion.training.get("args", {}))
    inherited.setdefault("backbone", champion.architecture["args"]["backbone"])
    inherited.setdefault("dropout", champion.architecture["args"].get("dropout", 0.2))
    inherited["img_size"] = champion.preprocessing.get("crop_size", inherited.get("img_size"))
    for key in ("epochs", "lr"):
        if getattr(args, key) is not None:
            inherited[key] = getattr(args, key)
    argv = ["--data", str(args.data), "--out", str(out), "--weights", "none",
            "--init-from", str(champion_path), "--name", args.name, "--device", args.device]
    for key in _INHERITED:
        if inherited.get(key) is not None:
            argv += [f"--{key.replace('_', '-')}", str(inherited[key])]
    if args.time_budget is not None:
        argv += ["--time-budget", str(args.time_budget)]
    return argv


def _write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(report, indent=2) + "\n")


def retrain(args: argparse.Namespace) -> dict[str, Any]:
    """The job, under the name's lock; returns the report (also written to disk)."""
    from training.classify.fit import get_args_parser as fit_parser
    from training.classify.fit import main as fit_main

    registry = ModelRegistry(args.registry)
    started = datetime.now(UTC)
    report_path = args.report or (args.registry / args.name / "reports" /
                                  f"{started.strftime('%Y%m%dT%H%M%S%fZ')}.json")
    with registry.lock(args.name):
        champion_version = registry.current(args.name)
        if champion_version is None:
            raise RegistryError(f"{args.registry / args.name} has no current version to "
                                f"retrain; publish and promote one first")
        champion_path = registry.path(args.name, champion_version)
        champion_manifest = registry.verify(args.name, champion_version)
        if champion_manifest.task != "classify":
            raise RegistryError(f"{args.name} is a {champion_manifest.task!r} model; ocellus "
                                f"retrain handles classifiers")
        labels = list(champion_manifest.labels)
        data_classes = load_splits(args.data).classes
        if data_classes != labels:
            raise DatasetError(f"{args.data}: the new data have classes {data_classes}, the "
                               f"served model has {labels}; a retrain keeps the label set")
        t_args = champion_manifest.training.get("args", {})
        eval_samples = _eval_samples(args, labels, t_args.get("val_fraction", 0.2),
                                     t_args.get("seed", 0))
        work = Path(tempfile.mkdtemp(prefix="ocellus-retrain-"))
        try:
            candidate_path = work / "candidate"
            fit_args = fit_parser().parse_args(_fit_argv(champion_manifest, champion_path,
                                                         args, candidate_path))
            fit_main(fit_args)
            # The same Predictor class, the same frozen samples, for both.
            scores = {}
            for role, path in (("champion", champion_path), ("candidate", candidate_path)):
                predictor = Predictor.from_export(path, device=args.device)
                if not isinstance(predictor, ClassificationPredictor):
                    raise RegistryError(f"{path}: expected a classifier, got {predictor.task}")
                scores[role] = evaluate_classifier(predictor, eval_samples)
            decision = decide(scores["champion"], scores["candidate"], min_gain=args.min_gain,
                              min_class_recall=args.min_class_recall,
                              max_class_drop=args.max_class_drop)
            report: dict[str, Any] = {
                "name": args.name, "started_at": started.isoformat(timespec="seconds"),
                "champion": {"version": champion_version, "top1": scores["champion"]["top1"],
                             "per_class": scores["champion"]["per_class"]},
                "candidate": {"top1": scores["candidate"]["top1"],
                              "per_class": scores["candidate"]["per_class"]},
                "eval": {"num_images": len(eval_samples),
                         "source": str(args.eval_data or f"{args.data} (val split)")},
                "min_gain": args.min_gain, **decision, "promoted_version": None,
            }
            if decision["promote"] and not args.dry_run:
                if registry.current(args.name) != champion_version:
                    raise RegistryError(f"{args.name}: current changed during the job; "
                                        f"not promoting over it")
                version = registry.publish(args.name, candidate_path, extra={
                    "retrained_from": champion_version, "retrain_report": str(report_path)})
                reason = (f"retrain: top-1 {scores['candidate']['top1']:.4f} vs "
                          f"{scores['champion']['top1']:.4f} (v{champion_version})")
                registry.promote(args.name, version, reason=reason)
                report["promoted_version"] = version
                log.info("promoted %s version %s (%s)", args.name, version, reason)
            else:
                log.info("kept %s version %s: %s", args.name, champion_version,
                         "; ".join(decision["reasons"]) or "dry run")
            report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            _write_report(report_path, report)
            report["report_path"] = str(report_path)
            return report
        finally:
            shutil.rmtree(work, ignore_errors=True)


def main(args: argparse.Namespace) -> int:
    """Run the job; the exit code says what was decided (see the module docstring)."""
    report = retrain(args)
    return EXIT_PROMOTED if report["promoted_version"] else EXIT_KEPT
