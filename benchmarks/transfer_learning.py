"""Transfer learning versus training from scratch on Fashion-MNIST, side by side.

For each training-set size (images per class) it trains, each within the same
wall-time budget:

1. efficientnet_lite0, ImageNet-pretrained, feature extraction (frozen backbone);
2. efficientnet_lite0, ImageNet-pretrained, fine-tuning (all stages);
3. efficientnet_lite0 from scratch;
4. resnet18 from scratch;

then scores every export on the untouched 10k Fashion-MNIST test set through the
served Predictor and prints top-1 and training minutes. Validation images for
model selection come from unused train-split images, never from the test set.

    .venv/bin/python benchmarks/transfer_learning.py                # 100 and 1000 per class
    .venv/bin/python benchmarks/transfer_learning.py --per-class 100 --budget 2

Needs Debian's dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import time
from pathlib import Path

import torch

from models.predictor import load_predictor
from training.classify.evaluate import evaluate_data
from training.classify.train import get_args_parser as fit_parser
from training.classify.train import main as fit
from training.data.fashion_mnist import export_fashion_mnist

CONFIGS = {
    # name: fit arguments
    "lite0 pretrained, feature-extract": ["--backbone", "efficientnet_lite0", "--mode",
                                          "feature-extract", "--lr", "3e-3"],
    "lite0 pretrained, fine-tune": ["--backbone", "efficientnet_lite0", "--mode", "fine-tune",
                                    "--trainable-stages", "9", "--lr", "2e-3",
                                    "--backbone-lr-scale", "0.25"],
    "lite0 from scratch": ["--backbone", "efficientnet_lite0", "--weights", "none", "--mode",
                           "fine-tune", "--trainable-stages", "9", "--lr", "3e-3",
                           "--backbone-lr-scale", "1"],
    "resnet18 from scratch": ["--backbone", "resnet18", "--weights", "none", "--mode",
                              "fine-tune", "--trainable-stages", "5", "--lr", "3e-3",
                              "--backbone-lr-scale", "1"],
}


def _epoch_seconds(data: Path, args: list[str], img_size: int, batch: int, n_train: int) -> float:
    """Time a few training steps to size the schedule so it completes within the budget."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = fit_parser().parse_args([
            "--data", str(data), "--out", str(Path(tmp) / "probe"), *args, "--epochs", "1",
            "--img-size", str(img_size), "--batch-size", str(batch), "--time-budget", "0.25"])
        first = fit(probe).training["history"][0]
    # The probe ran ~15 s of one epoch (plus a validation pass); scale to a full epoch.
    return first["minutes"] * 60 * max(1.0, n_train / batch / max(first["steps"], 1))


def run(per_class: int, budget_min: float, img_size: int, batch: int, work: Path,
        configs: list[str]) -> list[dict]:
    data = work / f"fashion-{per_class}"
    export_fashion_mnist(data, per_class=per_class, val_per_class=20, val_from="train",
                         include_test=True, seed=0, overwrite=True)
    rows = []
    for name in configs:
        args = CONFIGS[name]
        epoch_s = _epoch_seconds(data, args, img_size, batch, per_class * 10)
        epochs = max(1, int(budget_min * 60 * 0.95 // epoch_s))
        out = work / f"{per_class}-{name.replace(' ', '_').replace(',', '')}"
        start, cpu0 = time.monotonic(), time.process_time()
        manifest = fit(fit_parser().parse_args([
            "--data", str(data), "--out", str(out), *args, "--epochs", str(epochs),
            "--img-size", str(img_size), "--batch-size", str(batch), "--patience", "1000",
            "--time-budget", str(budget_min), "--name", "bench"]))
        minutes = (time.monotonic() - start) / 60
        cpu_minutes = (time.process_time() - cpu0) / 60
        report = evaluate_data(load_predictor(out), data, split="test", batch_size=200)
        rows.append({"per_class": per_class, "config": name, "test_top1": report["top1"],
                     "val_top1": manifest.metrics["val"]["top1"],
                     "epochs": len(manifest.training["history"]),
                     "minutes": minutes, "cpu_minutes": cpu_minutes})
        logging.info("%s", rows[-1])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per-class", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--budget", type=float, nargs="+", default=[3.0, 15.0],
                   help="wall-time minutes per training, one per --per-class value")
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--work", type=Path, default=None, help="keep data and exports here")
    args = p.parse_args()
    if len(args.budget) == 1:
        args.budget = args.budget * len(args.per_class)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        rows = [r for n, b in zip(args.per_class, args.budget, strict=True)
                for r in run(n, b, args.img_size, args.batch_size, work, args.configs)]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nFashion-MNIST, top-1 on the 10k test set; img {args.img_size} px, "
          f"batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
          f"peak RSS {peak_mb:.0f} MB")
    print(f"{'per class':>9}  {'config':<36} {'test top-1':>10} {'epochs':>6} "
          f"{'wall min':>8} {'CPU min':>8}")
    for r in rows:
        print(f"{r['per_class']:>9}  {r['config']:<36} {r['test_top1']:>10.4f} {r['epochs']:>6} "
              f"{r['minutes']:>8.1f} {r['cpu_minutes']:>8.1f}")
    for n in args.per_class:
        by = {r["config"]: r["test_top1"] for r in rows if r["per_class"] == n}
        pre = max((v for k, v in by.items() if "pretrained" in k), default=None)
        scratch = max((v for k, v in by.items() if "scratch" in k), default=None)
        if pre is not None and scratch is not None:
            print(f"{n}/class: best pretrained - best from scratch = "
                  f"{100 * (pre - scratch):+.1f} points (goal at 100/class: >= +15)")
        if "lite0 pretrained, fine-tune" in by:
            print(f"{n}/class: fine-tune top-1 {100 * by['lite0 pretrained, fine-tune']:.1f}% "
                  f"(goal at 1000/class: >= 90% within 15 min)")


if __name__ == "__main__":
    main()
