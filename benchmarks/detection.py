"""Detection benchmark: pretrained vs from-scratch backbone, and inference speed.

Trains the YOLO-style `Detector` on a `synth-detect` set twice with the same
CPU budget (about 15 CPU-minutes in all, half each): efficientnet_lite0 with
ImageNet weights, and the same backbone from scratch. Both runs get the same
number of epochs, sized from a one-epoch probe, so they use the same compute.
Then it times the served predict path (`DetectionPredictor`: letterbox,
forward, decode, NMS, map back) at 416 and 640 px on real photos.

    .venv/bin/python benchmarks/detection.py            # ~15 CPU-minutes of training
    .venv/bin/python benchmarks/detection.py --quick    # a smoke run, ~2 CPU-minutes

CPU time is this process's (all its threads); on a shared machine wall time is
longer. Figures vary with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from models.detection import Detector
from models.detection.predictor import DetectionPredictor
from models.export import Manifest
from models.imaging import decode_image
from training.data.synth_detect import synth_detect
from training.detection.train import get_args_parser as fit_parser
from training.detection.train import main as fit

PHOTOS = Path("/usr/share/darknet/data")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="total training CPU-minutes, both runs (default 15; quick 1.5)")
    p.add_argument("--images", type=int, default=None, help="synth-detect images (300; quick 40)")
    p.add_argument("--img-size", type=int, default=None,
                   help="training input side (256; quick 160)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--speed-seconds", type=float, default=None,
                   help="timing length per input size (20; quick 4)")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temp dir)")
    p.add_argument("--seed", type=int, default=0)
    return p


def cpu_seconds() -> float:
    return time.process_time()


def fit_args(data: Path, out: Path, weights: str | None, epochs: int, args) -> argparse.Namespace:
    return fit_parser().parse_args([
        "--data", str(data), "--out", str(out), "--weights", weights or "none",
        "--epochs", str(epochs), "--img-size", str(args.img_size), "--batch-size",
        str(args.batch_size), "--seed", str(args.seed), "--no-progress"])


def train_run(data: Path, out: Path, weights: str | None, epochs: int, args) -> dict:
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    manifest = fit(fit_args(data, out, weights, epochs, args))
    val = manifest.metrics["val"]
    return {"weights": weights or "none (scratch)", "epochs": epochs,
            "map50": val["map50"], "map50_95": val["map50_95"],
            "precision": val["precision"], "recall": val["recall"],
            "cpu_minutes": (cpu_seconds() - cpu0) / 60,
            "wall_minutes": (time.perf_counter() - wall0) / 60,
            "best_epoch": manifest.training["best_epoch"]}


def throughput(size: int, num_classes: int, seconds: float, batch: int) -> dict:
    """Images per second of the served path (preprocess, forward, postprocess)."""
    torch.manual_seed(0)
    model = Detector("efficientnet_lite0", num_classes, img_size=size, backbone_weights=None)
    manifest = Manifest(task="detect", architecture={"name": "detector", "args": model.model_args},
                        labels=[f"c{i}" for i in range(num_classes)],
                        preprocessing=model.preprocessing.to_dict())
    predictor = DetectionPredictor(model, manifest)
    photos = [decode_image(p.read_bytes()).tensor for p in sorted(PHOTOS.glob("*.jpg"))]
    if not photos:
        raise SystemExit(f"no photos in {PHOTOS}: install Debian's darknet package")
    batches = [[photos[(i + j) % len(photos)] for j in range(batch)] for i in range(len(photos))]
    predictor.predict(batches[0])  # warm-up: allocations, oneDNN kernels
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        predictor.predict(batches[n % len(batches)], conf=0.25)
        n += 1
    elapsed = time.perf_counter() - start
    return {"size": size, "batch": batch, "images_per_s": n * batch / elapsed,
            "ms_per_image": 1000 * elapsed / (n * batch)}


def main(args: argparse.Namespace) -> dict:
    q = args.quick
    args.budget_minutes = args.budget_minutes or (1.5 if q else 15.0)
    args.images = args.images or (40 if q else 300)
    args.img_size = args.img_size or (160 if q else 256)
    args.speed_seconds = args.speed_seconds or (4.0 if q else 20.0)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    tmp = tempfile.TemporaryDirectory(prefix="ocellus-det-bench-") if args.out is None else None
    work = Path(tmp.name) if tmp else args.out
    try:
        data = synth_detect(work / "data", images=args.images, seed=args.seed, img_size=320,
                            overwrite=True)
        # Probe one epoch (pretrained; scratch costs the same) to size both runs.
        cpu0 = cpu_seconds()
        fit(fit_args(data, work / "probe", "imagenet", 1, args))
        per_epoch = cpu_seconds() - cpu0
        epochs = max(1, int(args.budget_minutes * 60 / 2 / per_epoch))
        print(f"probe: {per_epoch:.1f} CPU-s per epoch → {epochs} epochs per run "
              f"(budget {args.budget_minutes:g} CPU-min for both)", flush=True)
        runs = [train_run(data, work / "pretrained", "imagenet", epochs, args),
                train_run(data, work / "scratch", None, epochs, args)]
        speed = [throughput(s, 5, args.speed_seconds, b) for s in (416, 640) for b in (1, 8)]
    finally:
        if tmp:
            tmp.cleanup()

    print(f"\nsynth-detect: {args.images} images (80/20 train/val), efficientnet_lite0 "
          f"detector at {args.img_size} px, torch threads {torch.get_num_threads()}")
    print(f"{'backbone init':<18}{'epochs':>7}{'mAP50':>8}{'mAP50-95':>10}{'P':>7}{'R':>7}"
          f"{'CPU-min':>9}{'wall-min':>9}")
    for r in runs:
        print(f"{r['weights']:<18}{r['epochs']:>7}{r['map50']:>8.3f}{r['map50_95']:>10.3f}"
              f"{r['precision']:>7.3f}{r['recall']:>7.3f}{r['cpu_minutes']:>9.2f}"
              f"{r['wall_minutes']:>9.2f}")
    if runs[1]["map50"] > 0:
        print(f"pretrained / scratch mAP50: {runs[0]['map50'] / runs[1]['map50']:.1f}x")
    print(f"\n{'input px':<10}{'batch':>6}{'images/s':>10}{'ms/image':>10}   "
          "(DetectionPredictor: letterbox + forward + decode + NMS, real photos)")
    for s in speed:
        print(f"{s['size']:<10}{s['batch']:>6}{s['images_per_s']:>10.1f}{s['ms_per_image']:>10.1f}")
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "speed": speed}
    if args.out:
        (args.out / "detection_benchmark.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
