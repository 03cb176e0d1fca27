"""Fine-tune a pretrained backbone on an ImageFolder tree, evaluate, and export.

Built like torchvision's reference ``train.py``: `get_args_parser`, `main`,
`train_one_epoch` and `evaluate`, which scores the model being trained through
the served `ClassificationPredictor`. Two modes of transfer learning:

- ``feature-extract``: the backbone is frozen (weights and batch-norm
  statistics); only the new head trains.
- ``fine-tune`` (the default): the top ``--trainable-stages`` of the backbone's five
  uniform stages train too, at ``--backbone-lr-scale`` times the head's learning
  rate (times ``--layer-decay`` per stage below the top one).

The default recipe was chosen by `benchmarks/transfer_learning.py` at equal CPU
time (docs/training.md#the-transfer-learning-recipe): fine-tune the top two
stages (frozen stages need no backward pass, so more epochs fit the same CPU time,
and at equal CPU they scored more than every stage), with random resized crops of
60% of the area or more, flips and TrivialAugment. An EMA of the weights
(``--ema-decay``), mixup and CutMix, and layer-wise learning-rate decay are options:
none of them gained consistently there.

Under ``torchrun`` it trains data-parallel (`training.distributed`):
``--batch-size`` stays the global batch, rank 0 evaluates, checkpoints and
exports. Checkpoints (``OUT/checkpoints/last.pt`` every epoch, ``best.pt``)
carry every process's random state, so ``--resume`` continues the same run.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm import tqdm

from models.backbones import list_backbones
from models.classification.classifier import ImageClassifier
from models.classification.predictor import ClassificationPredictor
from models.errors import CheckpointError
from models.export import Manifest
from training.checkpoint import adopt_best, restore_rng, rng_state
from training.classify.data import (
    ImageListDataset,
    Sample,
    load_splits,
    train_transform,
)
from training.classify.evaluate import evaluate_classifier
from training.distributed import LOCAL, DistributedContext, distributed, unwrap
from training.ema import ModelEMA
from training.export import dataset_entry, export_run, init_from_export, plain_args, run_manifest
from training.schedule import warmup_cosine

log = logging.getLogger(__name__)


def get_args_parser(prog: str = "ocellus train classify") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="ImageFolder tree")
    p.add_argument("--out", type=Path, required=True, help="export directory")
    p.add_argument("--backbone", default="efficientnet_lite0", choices=list_backbones())
    p.add_argument("--weights", default="imagenet",
                   help="backbone init: imagenet, none (from scratch) or a state-dict path")
    p.add_argument("--mode", default="fine-tune", choices=["feature-extract", "fine-tune"])
    p.add_argument("--trainable-stages", type=int, default=2,
                   help="fine-tune: how many of the backbone's top stages train")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32,
                   help="global batch: under torchrun each of N processes takes BATCH/N")
    p.add_argument("--img-size", type=int, default=None,
                   help="input side; default: the backbone's pretraining size")
    p.add_argument("--lr", type=float, default=2e-3, help="head learning rate")
    p.add_argument("--backbone-lr-scale", type=float, default=0.5)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--augment", default="trivialaugment",
                   choices=["none", "trivialaugment", "colorjitter"],
                   help="a policy on top of the random resized crop and flip")
    p.add_argument("--crop-scale", type=_fraction, default=0.6,
                   help="random resized crops keep this fraction of the image area, or more")
    p.add_argument("--mixup", type=float, default=0.0,
                   help="mixup's alpha; 0: off (with --cutmix: one of the two per batch)")
    p.add_argument("--cutmix", type=float, default=0.0, help="cutmix's alpha; 0: off")
    p.add_argument("--ema-decay", type=_decay, default=0.0,
                   help="evaluate and export an EMA of the weights, its decay rising to "
                        "this as (1+n)/(10+n) after n steps; 0: off")
    p.add_argument("--layer-decay", type=float, default=1.0,
                   help="fine-tune: each stage below the top learns at this times the "
                        "learning rate of the stage above it")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience (epochs)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="stop training after this many minutes")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="data-loading processes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--name", default=None, help="model name in the manifest (default: OUT's name)")
    p.add_argument("--version", default="1", help="model version in the manifest")
    p.add_argument("--resume", type=Path, default=None, help="checkpoint to resume from")
    p.add_argument("--init-from", type=Path, default=None,
                   help="an export (same backbone) whose weights start training: its backbone, "
                        "and its head when its labels are the data's (ocellus retrain)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _number(expected: str, ok: Callable[[float], bool]) -> Callable[[str], float]:
    """An argparse type: a number for which `ok` holds, else "expected `expected`"."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")  # fails `ok`, and the message below says what was expected
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value
    return parse


_fraction = _number("a fraction in (0, 1]", lambda v: 0.0 < v <= 1.0)
_decay = _number("0 or a decay in (0, 1)", lambda v: v == 0.0 or 0.0 < v < 1.0)


def _param_groups(model: ImageClassifier, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The head at ``--lr``; each trainable stage at ``--lr × --backbone-lr-scale``, times
    ``--layer-decay`` per stage below the top one (layer-wise learning-rate decay)."""
    groups = [{"params": list(model.head.parameters()), "lr": args.lr}]
    stages = list(model.backbone.stages().values())
    for depth, stage in enumerate(reversed(stages)):  # depth 0: the top stage
        params = [p for p in stage.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": args.lr * args.backbone_lr_scale
                           * args.layer_decay ** depth})
    return groups


def batch_mixer(args: argparse.Namespace, num_classes: int) -> Callable | None:
    """Mixup and/or CutMix over a batch (torchvision's), or None when both are off."""
    mixers = [m(alpha=a, num_classes=num_classes) for m, a in
              ((v2.MixUp, args.mixup), (v2.CutMix, args.cutmix)) if a > 0]
    return None if not mixers else mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, loader: DataLoader,
                    device: torch.device, epoch: int, *, bf16: bool = False,
                    deadline: float | None = None, progress: bool = True,
                    world: DistributedContext = LOCAL, mix: Callable | None = None,
                    ema: ModelEMA | None = None) -> dict[str, float]:
    """One pass over `loader` (cut short at `deadline`); returns the mean loss and the steps.

    Under torchrun, `model` is the DDP-wrapped one, `loader` this rank's shard,
    and the loss is the mean over every rank's images. `mix` blends each batch (its
    targets become class probabilities); `ema` is updated after every step.
    """
    model.train()
    total, seen, steps = 0.0, 0, 0
    # disable=None: a bar only on a terminal.
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None if progress else True)
    for images, targets in bar:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if mix is not None:
            images, targets = mix(images, targets)
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = criterion(model(images), targets)  # logits (B, K)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(unwrap(model))
        total += loss.item() * len(targets)
        seen += len(targets)
        steps += 1
        bar.set_postfix(loss=f"{total / seen:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        # Every rank stops at the same step, or the others would wait for it forever.
        if deadline is not None and world.any(time.monotonic() > deadline):
            break
    total, seen = world.sum([total, seen])
    return {"loss": total / max(seen, 1), "steps": steps}


def _check_optimizer_layout(ckpt: dict[str, Any], optimizer: torch.optim.Optimizer,
                            path: Path) -> None:
    """Refuse, naming the cause, a checkpoint whose optimiser trains other parameters."""
    saved = [len(g["params"]) for g in ckpt["optimizer"]["param_groups"]]
    mine = [len(g["params"]) for g in optimizer.param_groups]
    if saved != mine:
        was = ckpt.get("args", {})
        raise CheckpointError(
            f"{path}: its optimiser has parameter groups of {saved} tensors, this run's "
            f"{mine}. Resume with the options it was trained with (--mode "
            f"{was.get('mode')} --trainable-stages {was.get('trainable_stages')}), or "
            f"start afresh: a checkpoint written before the per-stage learning rates (one "
            f"group for the whole backbone) resumes only with one trainable stage.")


def evaluate(predictor: ClassificationPredictor, samples: list[Sample], *,
             batch_size: int = 64) -> dict[str, Any]:
    """Top-1, top-5 and per-class figures of the model being trained, through its predictor."""
    # No dropout, frozen batch-norm statistics: the model as it will be served.
    predictor.model.eval()
    return evaluate_classifier(predictor, samples, batch_size=batch_size)


def main(args: argparse.Namespace) -> Manifest | None:
    """Train, keep the best epoch by validation top-1, export it to ``args.out``.

    Returns:
        The export's manifest, as written; None on the ranks other than 0 of a
        torchrun launch, which export nothing.
    """
    with distributed(args.device) as world:
        return _train(args, world)


def _train(args: argparse.Namespace, world: DistributedContext) -> Manifest | None:
    torch.manual_seed(args.seed)
    device = world.device
    local_batch = world.local_batch_size(args.batch_size)
    splits = load_splits(args.data, val_fraction=args.val_fraction, seed=args.seed)
    architecture = {"name": "classifier", "args": {
        "backbone": args.backbone, "num_classes": len(splits.classes), "dropout": args.dropout}}
    model = ImageClassifier(args.backbone, len(splits.classes), dropout=args.dropout,
                            backbone_weights=args.weights)
    if args.init_from:
        init_from_export(model, args.init_from, architecture, splits.classes,
                         class_tensors="head.")
    pre = model.backbone.preprocessing
    pre = pre.with_size(args.img_size) if args.img_size else pre
    trainable = 0 if args.mode == "feature-extract" else args.trainable_stages
    model.backbone.freeze(trainable)
    model.to(device, memory_format=torch.channels_last)

    manifest = run_manifest("classify", args, architecture=architecture, labels=splits.classes,
                            preprocessing=pre.to_dict())
    # `served` is what is evaluated, kept as the best epoch and exported: the model, or
    # the moving average of its weights (on rank 0 alone: the others export nothing).
    ema = ModelEMA(model, args.ema_decay) if args.ema_decay and world.is_main else None
    served = ema.module if ema else model
    predictor = ClassificationPredictor(served, manifest, device)
    train_set = ImageListDataset(splits.train, train_transform(
        pre, augment=args.augment, crop_scale=args.crop_scale))
    sampler = world.sampler(train_set, seed=args.seed)  # None: one process shuffles it all
    shard = len(train_set) if sampler is None else len(sampler)
    loader = DataLoader(train_set, batch_size=local_batch, shuffle=sampler is None,
                        sampler=sampler, drop_last=shard > local_batch, num_workers=args.workers,
                        persistent_workers=args.workers > 0)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    mix = batch_mixer(args, len(splits.classes))
    optimizer = torch.optim.AdamW(_param_groups(model, args), weight_decay=args.weight_decay)
    scheduler = warmup_cosine(optimizer, total_steps=args.epochs * len(loader),
                              warmup_steps=round(args.warmup_epochs * len(loader)))
    world.seed_process(args.seed)

    ckpt_dir = args.out / "checkpoints"
    if world.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    start_epoch, best, best_epoch, history = 0, -1.0, -1, []
    gained = -1  # the last epoch that beat all before it (a tie is no gain): patience
    best_metrics: dict[str, Any] | None = None
    if args.resume:
        # weights_only: a checkpoint is data; unpickling arbitrary objects would run code.
        ckpt = torch.load(args.resume, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        _check_optimizer_layout(ckpt, optimizer, args.resume)
        if ema is not None:  # a checkpoint without one starts the average at its weights
            ema.load_state_dict(ckpt.get("ema") or {"module": ckpt["model"], "updates": 0})
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        start_epoch = ckpt["epoch"] + 1
        best, best_epoch, history = ckpt["best_top1"], ckpt["best_epoch"], ckpt["history"]
        gained = ckpt.get("gained", best_epoch)
        restore_rng(ckpt.get("rng"), rank=world.rank, world_size=world.world_size)
        if world.is_main and not adopt_best(args.resume, ckpt_dir / "best.pt"):
            best, best_epoch = -1.0, -1
        log.info("resumed from %s at epoch %d", args.resume, start_epoch)
    # `net` is what trains (DDP under torchrun); `model` is evaluated, saved and exported.
    net = world.wrap(model)

    started = time.monotonic()
    deadline = started + args.time_budget * 60 if args.time_budget else None
    for epoch in range(start_epoch, args.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)  # a new order each epoch, the same on every rank
        losses = train_one_epoch(net, criterion, optimizer, scheduler, loader, device, epoch,
                                 bf16=args.bf16, deadline=deadline,
                                 progress=not args.no_progress and world.is_main, world=world,
                                 mix=mix, ema=ema)
        # Rank 0 evaluates while the others wait at the gather. The random states are
        # taken after it: evaluating draws from the generator (a DataLoader's seed).
        metrics = evaluate(predictor, splits.val, batch_size=args.batch_size * 2) \
            if world.is_main else {}
        rng = world.all_gather(rng_state())
        stop = False
        if world.is_main:  # the others wait for its decision at the broadcast below
            history.append({"epoch": epoch, "steps": losses["steps"],
                            "train_loss": losses["loss"], "val_top1": metrics["top1"],
                            "val_top5": metrics["top5"], "lr": scheduler.get_last_lr()[0],
                            "minutes": (time.monotonic() - started) / 60})
            improved = metrics["top1"] >= best  # a tie goes to the later, longer-trained epoch
            if metrics["top1"] > best:
                gained = epoch
            if improved:
                best, best_epoch, best_metrics = metrics["top1"], epoch, metrics
            log.info("epoch %d/%d  loss %.4f  val top-1 %.4f  top-5 %.4f%s", epoch + 1,
                     args.epochs, losses["loss"], metrics["top1"], metrics["top5"],
                     "  (best)" if improved else "")
            ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "ema": None if ema is None else ema.state_dict(),
                    "lr_scheduler": scheduler.state_dict(), "epoch": epoch,
                    # Plain types only (paths as text), so the checkpoint loads with weights_only.
                    "args": plain_args(args), "best_top1": best, "best_epoch": best_epoch,
                    "history": history, "gained": gained, "rng": rng}
            torch.save(ckpt, ckpt_dir / "last.pt")
            if improved:
                torch.save(ckpt, ckpt_dir / "best.pt")
            if epoch - gained >= args.patience:
                log.info("early stop: no improvement for %d epochs", args.patience)
                stop = True
            elif deadline is not None and time.monotonic() > deadline:
                log.info("time budget of %.1f min reached", args.time_budget)
                stop = True
        if world.broadcast(stop):
            break

    if not world.is_main:
        return None
    if best_epoch < 0:
        raise RuntimeError("no epoch was trained; nothing to export")
    if best_metrics is None or best_epoch != history[-1]["epoch"]:
        kept = torch.load(ckpt_dir / "best.pt", map_location="cpu", weights_only=True)
        served.load_state_dict(kept["ema"]["module"] if ema and kept.get("ema")
                               else kept["model"])
    if best_metrics is None:  # resumed, and no epoch beat the best before it
        best_metrics = evaluate(predictor, splits.val, batch_size=args.batch_size * 2)
    dataset = dataset_entry(args.data, splits.classes, Path(args.data),
                            train=[(p,) for p, _ in splits.train],
                            val=[(p,) for p, _ in splits.val])
    manifest = export_run(served, manifest, args, metrics=best_metrics, dataset=dataset,
                          history=history, best_epoch=best_epoch, started=started,
                          checkpoint=ckpt_dir / "best.pt")
    log.info("exported %s (val top-1 %.4f at epoch %d)", args.out, best_metrics["top1"],
             best_epoch + 1)
    return manifest
