"""The one training-export path: the manifest a run writes, for every task alike.

Both trainers (`training.classify.train`, `training.detection.train`) start
their manifest with `run_manifest` and finish and write it with `export_run`,
so an export's sections have the same keys whatever its task:

- ``dataset``: ``fingerprint`` (`dataset_fingerprint`), ``data`` (what
  ``--data`` named), ``val_dir`` (a folder holding the val images and no train
  image, or None), ``num_train``, ``num_val``;
- ``training``: ``best_epoch``, ``history``, ``minutes``, ``args`` (the
  command's options), ``frozen_stages``;
- ``provenance``: ``command``, ``backbone_weights``, ``checkpoint``, ``torch``,
  ``python``.

A run that starts from another export (``--init-from``, as ``ocellus retrain``
does) loads it with `init_from_export`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.errors import ExportError
from models.export import Manifest, load_export, save_export

log = logging.getLogger(__name__)

Files = Sequence[Path]
"""One sample's files: its image, then its label files if the task has any."""


def plain_args(args: argparse.Namespace) -> dict[str, Any]:
    """The command's options as JSON types (paths as text), for manifests and checkpoints."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def run_manifest(task: str, args: argparse.Namespace, *, architecture: dict[str, Any],
                 labels: Sequence[str], preprocessing: dict[str, Any]) -> Manifest:
    """What serving needs, known before training starts; `export_run` adds the rest."""
    return Manifest(task=task, name=args.name or args.out.name, version=str(args.version),
                    architecture=architecture, labels=list(labels), preprocessing=preprocessing)


def dataset_fingerprint(names: Sequence[str], root: Path,
                        splits: Mapping[str, Sequence[Files]]) -> str:
    """sha256 over the class names and every split's files: path relative to `root`, bytes.

    A missing file (an image without a label file: no objects) hashes as empty.
    Paths are relative so a data set keeps its fingerprint when it moves.
    """
    digest = hashlib.sha256("\n".join(names).encode())
    for split in sorted(splits):
        for files in sorted(splits[split]):
            for path in files:
                rel = path.relative_to(root) if path.is_relative_to(root) else path
                digest.update(f"{split}/{rel.as_posix()}".encode())
                digest.update(hashlib.sha256(path.read_bytes() if path.is_file() else b"")
                              .digest())
    return digest.hexdigest()


def _val_dir(train: Sequence[Files], val: Sequence[Files]) -> Path | None:
    """The deepest folder holding every val image and no train image, if there is one."""
    if not val:
        return None
    # absolute(), not resolve(): a symlinked image (coco_to_yolo --no-copy) stays in its split.
    folder = Path(os.path.commonpath([files[0].absolute().parent for files in val]))
    if any(files[0].absolute().is_relative_to(folder) for files in train):
        return None  # a split drawn from one tree: no folder of val images only
    return folder


def dataset_entry(data: Path, names: Sequence[str], root: Path, *, train: Sequence[Files],
                  val: Sequence[Files]) -> dict[str, Any]:
    """The manifest's ``dataset`` section.

    Args:
        data: What ``--data`` named (an ImageFolder tree, a DATA.yaml).
        names: The class names.
        root: The folder the samples' paths are fingerprinted relative to.
        train: The training samples, each as its files.
        val: The validation samples, each as its files.
    """
    val_dir = _val_dir(train, val)
    return {"fingerprint": dataset_fingerprint(names, root, {"train": train, "val": val}),
            "data": str(Path(data).resolve()),
            "val_dir": None if val_dir is None else str(val_dir),
            "num_train": len(train), "num_val": len(val)}


def export_run(model: nn.Module, manifest: Manifest, args: argparse.Namespace, *,
               metrics: dict[str, Any], dataset: dict[str, Any],
               history: list[dict[str, Any]], best_epoch: int, started: float,
               checkpoint: Path) -> Manifest:
    """Complete a run's manifest and write the export to ``args.out``.

    Args:
        model: The best model; its ``backbone`` says which stages were frozen.
        manifest: From `run_manifest`.
        args: The command's options.
        metrics: The best model's scores on the val split, as served.
        dataset: From `dataset_entry`.
        history: One record per epoch.
        best_epoch: The epoch exported.
        started: ``time.monotonic()`` when the run started.
        checkpoint: The checkpoint the export's weights come from.

    Returns:
        The manifest as written.
    """
    manifest.metrics = {"val": metrics}
    manifest.dataset = dataset
    manifest.training = {"best_epoch": best_epoch, "history": history,
                         "minutes": (time.monotonic() - started) / 60, "args": plain_args(args),
                         "frozen_stages": list(model.backbone.frozen_stages)}
    manifest.provenance = {"command": f"ocellus train {manifest.task}",
                           "backbone_weights": str(args.weights), "checkpoint": str(checkpoint),
                           "torch": torch.__version__, "python": platform.python_version()}
    return save_export(model, args.out, manifest)


def init_from_export(model: nn.Module, path: str | Path, architecture: dict[str, Any],
                     labels: Sequence[str], *, class_tensors: str) -> None:
    """Start `model` from a verified export of the same architecture and backbone.

    Every tensor whose name and shape fit is copied. The class outputs (names
    starting with `class_tensors`) are copied only when the export has the same
    labels, in the same order: a retrain keeps the label set, so everything
    transfers; from a model of other classes the rest transfers (as Ultralytics
    does) and the class outputs keep their fresh initialisation, since another
    model's class k means something else.

    Args:
        model: The model about to train.
        path: The export.
        architecture: `model`'s manifest ``architecture`` (``name``, ``args.backbone``).
        labels: `model`'s class names.
        class_tensors: The prefix of the state-dict names of the class outputs.

    Raises:
        ExportError: The export is another architecture or backbone, or fails verification.
    """
    source, manifest = load_export(path)
    theirs, backbone = manifest.architecture, architecture["args"]["backbone"]
    if theirs.get("name") != architecture["name"] or \
            theirs.get("args", {}).get("backbone") != backbone:
        raise ExportError(f"{path}: --init-from needs a {architecture['name']!r} export on "
                          f"backbone {backbone!r}, got {theirs}")
    same_labels = list(manifest.labels) == list(labels)
    mine = model.state_dict()
    fits = {k: v for k, v in source.state_dict().items()
            if k in mine and mine[k].shape == v.shape
            and (same_labels or not k.startswith(class_tensors))}
    model.load_state_dict(fits, strict=False)
    log.info("initialised from %s: %d/%d tensors transferred%s", path, len(fits), len(mine),
             "" if same_labels else " (other labels: class outputs left fresh)")
