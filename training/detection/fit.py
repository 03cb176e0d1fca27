"""Train a `Detector` on a YOLO-format data set.

Shaped like torchvision's reference scripts: `train_one_epoch`, `evaluate_detector`,
and checkpoints ``{model, optimizer, lr_scheduler, epoch, args, ...}`` that
describe themselves (`model_args`, `names`), so training can resume and the best
model can be rebuilt from the file alone.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from models.detection.detector import Detector
from models.errors import DatasetError, ExportError
from training.detection.augment import DetectionAugment
from training.detection.dataset import YoloDetectionDataset, detection_collate, load_data_yaml
from training.detection.evaluate import evaluate_detector
from training.detection.loss import DetectionLoss
from training.schedule import warmup_cosine

log = logging.getLogger(__name__)


@dataclass
class DetectorTrainArgs:
    """Everything a run was started with (stored in every checkpoint)."""

    data_yaml: str
    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = "imagenet"
    trainable_stages: int | None = None  # None: the whole backbone trains; 0: frozen
    epochs: int = 30
    img_size: int = 320
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    width: int = 64
    mosaic: float = 0.5
    workers: int = 0
    seed: int = 0
    device: str = "cpu"
    init_from: str | None = None  # an export whose weights start the run
    time_budget: float | None = None  # minutes; training stops after the epoch that passes it


@dataclass
class DetectorTrainResult:
    """The best model (eval mode, best weights), its val metrics, and where it was saved."""

    model: Detector
    metrics: dict[str, Any]
    names: list[str]
    args: dict[str, Any]
    model_args: dict[str, Any]
    best_path: Path
    last_path: Path
    history: list[dict[str, Any]] = field(default_factory=list)


def build_optimizer(model: Detector, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and norm weights (1-d parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def train_one_epoch(model: Detector, loss_fn: DetectionLoss, loader: DataLoader,
                    optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler,
                    device: torch.device, *, epoch: int, progress: bool = True) -> dict[str, float]:
    """One pass over `loader`; returns the mean loss and its parts."""
    model.train()
    pre = model.preprocessing
    sums: dict[str, float] = {}
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not progress, leave=False)
    for images, targets in bar:
        # channels_last: depthwise and 1x1 convs run markedly faster in it on CPU.
        x = pre.normalize(images).to(device).contiguous(memory_format=torch.channels_last)
        loss, parts = loss_fn(model(x), targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        optimizer.step()
        scheduler.step()
        for k, v in {"loss": float(loss.detach()), **parts}.items():
            sums[k] = sums.get(k, 0.0) + v
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    return {k: v / max(1, len(loader)) for k, v in sums.items()}


def _checkpoint(model: Detector, optimizer, scheduler, epoch: int, args: DetectorTrainArgs,
                names: list[str], metrics: dict[str, Any], best: float) -> dict[str, Any]:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(), "epoch": epoch, "args": asdict(args),
            "model_args": model.model_args, "names": names, "metrics": metrics,
            "best_map50_95": best}


def init_from_export(model: Detector, path: str | Path) -> None:
    """Start from a verified detector export: every tensor whose name and shape fit.

    A retrain keeps the label set, so everything transfers; an export with other
    classes (or another head width) transfers what fits, as Ultralytics does, and
    the rest keeps its fresh initialisation.

    Raises:
        ExportError: The export is not a detector on the same backbone.
    """
    from models.export import load_export

    source, manifest = load_export(path)
    theirs = manifest.architecture.get("args", {})
    if manifest.architecture.get("name") != "detector" or \
            theirs.get("backbone") != model.model_args["backbone"]:
        raise ExportError(f"{path}: --init-from needs a detector export on backbone "
                          f"{model.model_args['backbone']!r}, got {manifest.architecture}")
    mine = model.state_dict()
    fits = {k: v for k, v in source.state_dict().items()
            if k in mine and mine[k].shape == v.shape}
    model.load_state_dict(fits, strict=False)
    log.info("initialised from %s: %d/%d tensors transferred", path, len(fits), len(mine))


def load_detector_checkpoint(path: str | Path, *, device: str = "cpu") -> tuple[Detector, dict]:
    """Rebuild the model of a checkpoint from the file alone; returns (model in eval mode, ckpt)."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = Detector(**ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def train_detector(data_yaml: str | Path, out_dir: str | Path, *,
                   backbone: str = "efficientnet_lite0", backbone_weights: str | None = "imagenet",
                   freeze_backbone: bool = False, trainable_stages: int | None = None,
                   epochs: int = 30, img_size: int = 320, batch_size: int = 16, lr: float = 2e-3,
                   weight_decay: float = 5e-4, warmup_epochs: float = 1.0, width: int = 64,
                   mosaic: float = 0.5, workers: int = 0, seed: int = 0, device: str = "cpu",
                   resume: str | Path | None = None, init_from: str | Path | None = None,
                   time_budget: float | None = None, progress: bool = True
                   ) -> DetectorTrainResult:
    """Train a detector; write ``last.pt`` every epoch and ``best.pt`` at the best val mAP50-95.

    Args:
        data_yaml: A DATA.yaml in the Ultralytics layout (see `training.detection.dataset`).
        out_dir: Where the checkpoints go.
        backbone: A registered backbone name.
        backbone_weights: Its initial weights (``"imagenet"``, None or a path).
        freeze_backbone: Train the neck and head only (same as ``trainable_stages=0``).
        trainable_stages: Train only the top K backbone stages (None: all).
        resume: A ``last.pt`` to continue from (its model, optimizer, schedule, epoch).
        init_from: A detector export to start from (the retraining job's champion).
        time_budget: Minutes; training stops after the epoch in which they run out.
        progress: Show a tqdm progress bar.

    Raises:
        DatasetError: The data set is malformed or has no val split.
    """
    if freeze_backbone and trainable_stages not in (None, 0):
        raise ValueError(f"freeze_backbone=True conflicts with trainable_stages={trainable_stages}")
    args = DetectorTrainArgs(
        data_yaml=str(data_yaml), backbone=backbone,
        backbone_weights=None if backbone_weights is None else str(backbone_weights),
        trainable_stages=0 if freeze_backbone else trainable_stages, epochs=epochs,
        img_size=img_size, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        warmup_epochs=warmup_epochs, width=width, mosaic=mosaic, workers=workers, seed=seed,
        device=device, init_from=None if init_from is None else str(init_from),
        time_budget=time_budget)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = load_data_yaml(data_yaml)
    if not spec.val:
        raise DatasetError(f"{spec.yaml_path}: training needs a 'val' split to pick the best model")
    names = spec.names
    torch.manual_seed(seed)
    random.seed(seed)
    dev = torch.device(device)

    model = Detector(backbone, len(names), width=width, img_size=img_size,
                     backbone_weights=None if resume or init_from else backbone_weights)
    if init_from is not None and resume is None:
        init_from_export(model, init_from)
    model = model.to(dev, memory_format=torch.channels_last)
    if args.trainable_stages is not None:
        model.backbone.freeze(args.trainable_stages)
    train_set = YoloDetectionDataset(spec.train, len(names), img_size=img_size,
                                     augment=DetectionAugment(img_size, mosaic_p=mosaic))
    val_set = YoloDetectionDataset(spec.val, len(names), img_size=img_size)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=workers,
                        collate_fn=detection_collate, drop_last=len(train_set) > batch_size,
                        generator=torch.Generator().manual_seed(seed))
    optimizer = build_optimizer(model, lr, weight_decay)
    steps = epochs * len(loader)
    scheduler = warmup_cosine(optimizer, total_steps=steps,
                              warmup_steps=round(warmup_epochs * len(loader)))
    loss_fn = DetectionLoss(model.reg_max)

    start_epoch, best, history = 0, -1.0, []
    best_path, last_path = out / "best.pt", out / "last.pt"
    if resume is not None:
        ckpt = torch.load(resume, map_location=dev, weights_only=True)
        if ckpt["model_args"] != model.model_args:
            raise ValueError(f"checkpoint {resume} is for {ckpt['model_args']}, "
                             f"not {model.model_args}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        start_epoch, best = ckpt["epoch"] + 1, ckpt.get("best_map50_95", -1.0)
        log.info("resumed from %s at epoch %d", resume, start_epoch)

    deadline = None if time_budget is None else time.monotonic() + time_budget * 60
    for epoch in range(start_epoch, epochs):
        if deadline is not None and time.monotonic() > deadline:
            log.info("time budget of %.1f min reached after %d epochs", time_budget, epoch)
            break
        t0 = time.perf_counter()
        losses = train_one_epoch(model, loss_fn, loader, optimizer, scheduler, dev, epoch=epoch,
                                 progress=progress)
        train_s = time.perf_counter() - t0
        metrics = evaluate_detector(model, val_set, names)
        record = {"epoch": epoch, **losses, "train_seconds": train_s,
                  "seconds": time.perf_counter() - t0,
                  **{k: metrics[k] for k in ("map50", "map50_95", "precision", "recall")}}
        history.append(record)
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in record.items()})
        ckpt = _checkpoint(model, optimizer, scheduler, epoch, args, names, metrics, best)
        if metrics["map50_95"] > best:
            best = ckpt["best_map50_95"] = metrics["map50_95"]
            torch.save(ckpt, best_path)
        torch.save(ckpt, last_path)

    if not best_path.exists():  # resumed a finished run: nothing new was trained
        torch.save(torch.load(last_path, weights_only=True), best_path)
    best_model, best_ckpt = load_detector_checkpoint(best_path, device=device)
    return DetectorTrainResult(best_model, best_ckpt["metrics"], names, asdict(args),
                               best_model.model_args, best_path, last_path, history)
