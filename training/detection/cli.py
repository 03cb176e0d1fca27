"""``ocellus train detect``: transfer-learn a YOLO-style detector and export it.

Trains with `train_detector` (checkpoints in ``OUT/checkpoints/``: ``last.pt``
every epoch, ``best.pt`` at the best val mAP50-95, both resumable), then scores
the best model through the served `DetectionPredictor` and writes the export
(``model.safetensors`` + ``manifest.json``) into ``OUT``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch

from models.backbones import list_backbones
from models.detection.predictor import DetectionPredictor
from models.export import Manifest, save_export
from training.detection.dataset import DetectionDataSpec, label_path_for, load_data_yaml
from training.detection.evaluate import evaluate_detection_data
from training.detection.fit import train_detector

log = logging.getLogger(__name__)

METRIC_KEYS = ("num_images", "num_objects", "map50", "map50_95", "precision", "recall",
               "per_class_ap", "per_class_ap50", "per_class_recall", "recall_at", "conf", "iou",
               "max_det")


def get_args_parser(prog: str = "ocellus train detect") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, required=True,
                   help="DATA.yaml in the Ultralytics layout (path, train, val, names)")
    p.add_argument("--out", type=Path, required=True, help="export directory")
    p.add_argument("--backbone", default="efficientnet_lite0", choices=list_backbones())
    p.add_argument("--weights", default="imagenet",
                   help="backbone init: imagenet, none (from scratch) or a state-dict path")
    frozen = p.add_mutually_exclusive_group()
    frozen.add_argument("--freeze-backbone", action="store_true",
                        help="train the neck and head only")
    frozen.add_argument("--trainable-stages", type=int, default=None, metavar="K",
                        help="train only the top K backbone stages (default: all)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--img-size", type=int, default=320, help="letterbox side, a multiple of 32")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--width", type=int, default=64, help="channels of the neck and head")
    p.add_argument("--mosaic", type=float, default=0.5, help="probability of a mosaic sample")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--name", default=None, help="model name in the manifest (default: OUT's name)")
    p.add_argument("--version", default="1", help="model version in the manifest")
    p.add_argument("--resume", type=Path, default=None,
                   help="a checkpoint (OUT/checkpoints/last.pt) to continue from")
    p.add_argument("--init-from", type=Path, default=None,
                   help="a detector export to start from (its tensors that fit)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="training minutes; stops after the epoch that passes them")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def dataset_fingerprint(spec: DetectionDataSpec) -> str:
    """sha256 over class names and, per image (sorted), its path, bytes and label bytes."""
    digest = hashlib.sha256("\n".join(spec.names).encode())
    for split, images in (("train", spec.train), ("val", spec.val)):
        for image in sorted(images):
            label = label_path_for(image)
            rel = image.relative_to(spec.root) if image.is_relative_to(spec.root) else image
            digest.update(f"{split}/{rel.as_posix()}".encode())
            digest.update(hashlib.sha256(image.read_bytes()).digest())
            digest.update(hashlib.sha256(label.read_bytes() if label.is_file() else b"").digest())
    return digest.hexdigest()


def _jsonable(args: argparse.Namespace) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train, score the best epoch as served, export to ``args.out``."""
    started = time.monotonic()
    weights = None if str(args.weights).lower() == "none" else args.weights
    spec = load_data_yaml(args.data)  # fails early, naming file and line, on a bad label
    result = train_detector(
        args.data, args.out / "checkpoints", backbone=args.backbone, backbone_weights=weights,
        freeze_backbone=args.freeze_backbone, trainable_stages=args.trainable_stages,
        epochs=args.epochs, img_size=args.img_size, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, width=args.width,
        mosaic=args.mosaic, workers=args.workers, seed=args.seed, device=args.device,
        resume=args.resume, init_from=args.init_from, time_budget=args.time_budget,
        progress=not args.no_progress)
    model = result.model.cpu()
    manifest = Manifest(
        task="detect",
        name=args.name or args.out.name,
        version=str(args.version),
        architecture={"name": "detector", "args": model.model_args},
        labels=list(result.names),
        preprocessing=model.preprocessing.to_dict(),
    )
    # Score the best model exactly as it will be served: the export's own predictor,
    # the val images decoded by the service's decoder.
    report = evaluate_detection_data(DetectionPredictor(model, manifest), args.data,
                                     split="val", batch_size=args.batch_size)
    manifest.metrics = {"val": {k: report[k] for k in METRIC_KEYS}}
    manifest.dataset = {"fingerprint": dataset_fingerprint(spec), "data_yaml":
                        str(Path(args.data).resolve()), "num_train": len(spec.train),
                        "num_val": len(spec.val), "names": spec.names}
    best_epoch = max(result.history, key=lambda h: h["map50_95"])["epoch"] \
        if result.history else None
    # The keys `training.plots.plot_training_curves` (and the classifier's history) use.
    history = [{**h, "train_loss": h["loss"], "val_map50": h["map50"],
                "val_map50_95": h["map50_95"]} for h in result.history]
    manifest.training = {
        "best_epoch": best_epoch, "history": history,
        "minutes": (time.monotonic() - started) / 60, "args": _jsonable(args),
        "train_args": result.args,  # trainable_stages: None = all, 0 = frozen backbone
    }
    manifest.provenance = {"backbone_weights": str(weights), "command": "ocellus train detect",
                           "torch": torch.__version__, "python": platform.python_version(),
                           "checkpoint": str(result.best_path)}
    save_export(model, args.out, manifest)
    log.info("exported %s (val mAP50 %.4f, mAP50-95 %.4f)", args.out, report["map50"],
             report["map50_95"])
    return {"out": str(args.out), "map50": report["map50"], "map50_95": report["map50_95"],
            "history": history}
