"""``ocellus train detect``: transfer-learn a YOLO-style detector and export it.

Built like torchvision's reference ``train.py``: `get_args_parser`, `main`,
`train_one_epoch` and `evaluate`, which scores the model being trained through
the served `DetectionPredictor`. Checkpoints in ``OUT/checkpoints/`` (``last.pt``
every epoch, ``best.pt`` at the best val mAP50-95) hold ``{model, optimizer,
lr_scheduler, epoch, args, ...}`` and describe themselves (``model_args``,
``names``), so training can resume and the best model can be rebuilt from the
file alone; they carry every process's random state too. The best model goes
into ``OUT`` as an export (``model.safetensors`` + ``manifest.json``).

Under ``torchrun`` it trains data-parallel (`training.distributed`):
``--batch-size`` stays the global batch, rank 0 evaluates, checkpoints and
exports.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from models.backbones import list_backbones
from models.detection.detector import Detector
from models.detection.predictor import DetectionPredictor
from models.errors import DatasetError
from models.export import Manifest
from training.checkpoint import adopt_best, restore_rng, rng_state
from training.detection.augment import DetectionAugment
from training.detection.dataset import (
    YoloDetectionDataset,
    detection_collate,
    label_path_for,
    load_data_yaml,
)
from training.detection.evaluate import dataset_samples, evaluate_predictor
from training.detection.loss import DetectionLoss
from training.distributed import LOCAL, DistributedContext, distributed, unwrap
from training.export import dataset_entry, export_run, init_from_export, plain_args, run_manifest
from training.schedule import warmup_cosine

log = logging.getLogger(__name__)


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
                        help="train only the top K of the backbone's 5 stages (stem, "
                             "layer1..layer4; default: all)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--img-size", type=int, default=320, help="letterbox side, a multiple of 32")
    p.add_argument("--batch-size", type=int, default=16,
                   help="global batch: under torchrun each of N processes takes BATCH/N")
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


def build_optimizer(model: Detector, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and norm weights (1-d parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def train_one_epoch(model: torch.nn.Module, criterion: DetectionLoss,
                    optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, loader: DataLoader,
                    device: torch.device, epoch: int, *, progress: bool = True,
                    world: DistributedContext = LOCAL) -> dict[str, float]:
    """One pass over `loader`; returns the mean loss, its parts and the steps taken.

    `model` is a `Detector`, or under torchrun the DDP-wrapped one with `loader`
    this rank's shard; the losses are then the means over every rank.
    """
    model.train()
    pre = unwrap(model).preprocessing
    sums: dict[str, float] = {}
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not progress, leave=False)
    for images, targets in bar:
        # channels_last: depthwise and 1x1 convs run markedly faster in it on CPU.
        x = pre.normalize(images).to(device).contiguous(memory_format=torch.channels_last)
        loss, parts = criterion(model(x), targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        optimizer.step()
        scheduler.step()
        for k, v in {"loss": float(loss.detach()), **parts}.items():
            sums[k] = sums.get(k, 0.0) + v
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    # Every rank takes len(loader) steps: the mean of the ranks' means is the global mean.
    means = world.sum([v / max(1, len(loader)) / world.world_size for v in sums.values()])
    return {**dict(zip(sums, means, strict=True)), "steps": len(loader)}


def evaluate(predictor: DetectionPredictor, dataset: YoloDetectionDataset, *,
             batch_size: int = 16) -> dict[str, Any]:
    """COCO metrics of the model being trained, through the predictor that will serve it."""
    predictor.model.eval()
    return evaluate_predictor(predictor, dataset_samples(dataset), batch_size=batch_size)


def load_detector_checkpoint(path: str | Path, *, device: str = "cpu") -> tuple[Detector, dict]:
    """Rebuild the model of a checkpoint from the file alone; returns (model in eval mode, ckpt)."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = Detector(**ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def main(args: argparse.Namespace) -> Manifest | None:
    """Train, keep the best epoch by val mAP50-95, score it as served, export to ``args.out``.

    Returns:
        The export's manifest, as written; None on the ranks other than 0 of a
        torchrun launch, which export nothing.
    """
    with distributed(args.device) as world:
        return _train(args, world)


def _train(args: argparse.Namespace, world: DistributedContext) -> Manifest | None:
    started = time.monotonic()
    spec = load_data_yaml(args.data)  # fails early, naming file and line, on a bad label
    if not spec.val:
        raise DatasetError(f"{spec.yaml_path}: training needs a 'val' split to pick the best model")
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    device = world.device
    local_batch = world.local_batch_size(args.batch_size)
    weights = None if str(args.weights).lower() == "none" else args.weights
    trainable = 0 if args.freeze_backbone else args.trainable_stages  # None: all of it

    model = Detector(args.backbone, len(spec.names), width=args.width, img_size=args.img_size,
                     backbone_weights=None if args.resume or args.init_from else weights)
    architecture = {"name": "detector", "args": model.model_args}
    if args.init_from is not None and args.resume is None:
        init_from_export(model, args.init_from, architecture, spec.names,
                         class_tensors="cls_head.")
    if trainable is not None:
        model.backbone.freeze(trainable)
    manifest = run_manifest("detect", args, architecture=architecture, labels=spec.names,
                            preprocessing=model.preprocessing.to_dict())
    predictor = DetectionPredictor(model, manifest, device)  # moves the model to `device`
    train_set = YoloDetectionDataset(spec.train, len(spec.names), img_size=args.img_size,
                                     augment=DetectionAugment(args.img_size, mosaic_p=args.mosaic))
    val_set = YoloDetectionDataset(spec.val, len(spec.names), img_size=args.img_size)
    sampler = world.sampler(train_set, seed=args.seed)  # None: one process shuffles it all
    shard = len(train_set) if sampler is None else len(sampler)
    generator = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(train_set, batch_size=local_batch, shuffle=sampler is None,
                        sampler=sampler, num_workers=args.workers, collate_fn=detection_collate,
                        drop_last=shard > local_batch, generator=generator)
    optimizer = build_optimizer(model, args.lr, args.weight_decay)
    scheduler = warmup_cosine(optimizer, total_steps=args.epochs * len(loader),
                              warmup_steps=round(args.warmup_epochs * len(loader)))
    criterion = DetectionLoss(model.reg_max)
    world.seed_process(args.seed)

    ckpt_dir = args.out / "checkpoints"
    if world.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    best_path, last_path = ckpt_dir / "best.pt", ckpt_dir / "last.pt"
    start_epoch, best, best_epoch, history = 0, -1.0, -1, []
    if args.resume is not None:
        # weights_only: a checkpoint is data; unpickling arbitrary objects would run code.
        ckpt = torch.load(args.resume, map_location=device, weights_only=True)
        if ckpt["model_args"] != model.model_args:
            raise ValueError(f"checkpoint {args.resume} is for {ckpt['model_args']}, "
                             f"not {model.model_args}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        start_epoch, best = ckpt["epoch"] + 1, ckpt.get("best_map50_95", -1.0)
        best_epoch, history = ckpt.get("best_epoch", -1), ckpt.get("history", [])
        restore_rng(ckpt.get("rng"), rank=world.rank, world_size=world.world_size,
                    loader_generator=generator)
        if world.is_main and not adopt_best(args.resume, best_path):
            best, best_epoch = -1.0, -1
        log.info("resumed from %s at epoch %d", args.resume, start_epoch)
    # `net` is what trains (DDP under torchrun); `model` is evaluated, saved and exported.
    # A backbone's classification parts (its ImageNet head; the EfficientNets' and
    # MobileNetV3's head conv and pre-logits, ConvNeXt's final norm) are not in the pyramid
    # the neck reads: they get no gradient, and DDP must be told.
    net = world.wrap(model, find_unused_parameters=True)

    deadline = None if args.time_budget is None else started + args.time_budget * 60
    for epoch in range(start_epoch, args.epochs):
        # Rank 0's clock decides for all: a rank that stopped alone would hang the others.
        if deadline is not None and world.broadcast(time.monotonic() > deadline):
            log.info("time budget of %.1f min reached after %d epochs", args.time_budget, epoch)
            break
        if sampler is not None:
            sampler.set_epoch(epoch)  # a new order each epoch, the same on every rank
        losses = train_one_epoch(net, criterion, optimizer, scheduler, loader, device, epoch,
                                 progress=not args.no_progress and world.is_main, world=world)
        # Rank 0 evaluates while the others wait at the gather. The random states are
        # taken after it: evaluating draws from the generator (a DataLoader's seed).
        metrics = evaluate(predictor, val_set, batch_size=args.batch_size) \
            if world.is_main else {}
        rng = world.all_gather(rng_state(generator))
        if world.is_main:  # the others wait for the checkpoint at the barrier below
            history.append({"epoch": epoch, "steps": losses["steps"],
                            "train_loss": losses["loss"],
                            **{f"train_{k}": losses[k] for k in ("box", "cls", "dfl")},
                            **{f"val_{k}": metrics[k]
                               for k in ("map50", "map50_95", "precision", "recall")},
                            "lr": scheduler.get_last_lr()[0],
                            "minutes": (time.monotonic() - started) / 60})
            improved = metrics["map50_95"] > best
            if improved:
                best, best_epoch = metrics["map50_95"], epoch
            log.info("epoch %d/%d  loss %.4f  val mAP50 %.4f  mAP50-95 %.4f%s", epoch + 1,
                     args.epochs, losses["loss"], metrics["map50"], metrics["map50_95"],
                     "  (best)" if improved else "")
            ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "lr_scheduler": scheduler.state_dict(), "epoch": epoch,
                    # Plain types only (paths as text), so the checkpoint loads with weights_only.
                    "args": plain_args(args),
                    "model_args": model.model_args, "names": spec.names, "metrics": metrics,
                    "best_map50_95": best, "best_epoch": best_epoch, "history": history,
                    "rng": rng}
            torch.save(ckpt, last_path)
            if improved:
                torch.save(ckpt, best_path)
        world.barrier()

    if not world.is_main:
        return None
    if not best_path.exists():  # resumed a finished run: nothing new was trained
        torch.save(torch.load(last_path, weights_only=True), best_path)
    best_ckpt = torch.load(best_path, map_location=device, weights_only=True)
    model.load_state_dict(best_ckpt["model"])
    # The best epoch's scores, measured through this predictor on the val images as
    # evaluate_data reads them (`ocellus evaluate` reproduces them from the export).
    report = best_ckpt["metrics"]
    dataset = dataset_entry(args.data, spec.names, spec.root,
                            train=[(p, label_path_for(p)) for p in spec.train],
                            val=[(p, label_path_for(p)) for p in spec.val])
    manifest = export_run(model, manifest, args, metrics=report,
                          dataset=dataset, history=history, best_epoch=best_epoch,
                          started=started, checkpoint=best_path)
    log.info("exported %s (val mAP50 %.4f, mAP50-95 %.4f)", args.out, report["map50"],
             report["map50_95"])
    return manifest
