"""The accuracy an int8 export gives up, on three trained models, side by side.

For each model it trains an fp32 export with ``ocellus train``, makes its int8
variant with ``ocellus quantize`` (calibrated on the training split, scored on
the validation split with the same `Predictor`), and prints one table row: the
fp32 and int8 metric, the drop, the largest per-class recall drop, whether the
gate accepted it, and the int8 and fp32 model-only img/s at batch 8.

1. Fashion-MNIST (Debian's dataset-fashion-mnist): EfficientNet-Lite0, feature
   extraction, 200 train and 100 val images per class, 96 px.
2. scikit-learn's digits (8x8 handwritten digits, 1,797 images, upscaled): a
   second small data set, same recipe.
3. The YOLO-style detector (EfficientNet-Lite0) on synth-detect (garments pasted
   on real photos), mAP50-95.

Goals (the performance issue): top-1 drop <= 0.005 on both classifiers, mAP50-95
drop <= 0.01 on the detector.

    .venv/bin/python benchmarks/int8_accuracy.py [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.predictor import load_predictor
from training.quantize import EXIT_WRITTEN
from training.quantize import get_args_parser as quantize_parser
from training.quantize import main as quantize


def digits_tree(out: Path, *, size: int = 32, val_fraction: float = 0.25) -> Path:
    """scikit-learn's digits as an ImageFolder tree (train/ and val/), upscaled PNGs."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits.images))
    n_val = int(len(order) * val_fraction)
    for rank, i in enumerate(order):
        split = "val" if rank < n_val else "train"
        folder = out / split / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)  # 0..16 → 0..255
        Image.fromarray(pixels).resize((size, size), Image.BILINEAR).save(folder / f"{i}.png")
    return out


def _img_per_s(path: Path, precision: str, seconds: float = 2.0) -> float:
    predictor = load_predictor(path, precision=precision)
    x = torch.randn(8, 3, predictor.input_size, predictor.input_size)
    with torch.inference_mode():
        predictor.forward(x)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            predictor.forward(x)
            n += 8
    return n / (time.perf_counter() - start)


def run(name: str, export: Path, work: Path) -> dict:
    report = work / f"{name}-quantize.json"
    code = quantize(quantize_parser().parse_args([
        "--model", str(export), "--out", str(work / f"{name}-int8"), "--report", str(report)]))
    body = json.loads(report.read_text())
    metric = body["metric"]
    fp32, int8 = body["evaluation"]["fp32"][metric], body["evaluation"]["int8"][metric]
    speed = {"fp32": _img_per_s(export, "fp32")}
    if code == EXIT_WRITTEN:
        speed["int8"] = _img_per_s(work / f"{name}-int8", "int8")
    return {"name": name, "metric": metric, "fp32": fp32, "int8": int8,
            "drop": fp32 - int8, "max_class_drop": body["drop"]["max_class_recall"],
            "accepted": body["accepted"], "val_images": body["evaluation"]["fp32"].get(
                "num_images"), "speed": speed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="fewer images and epochs")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from training.classify.train import get_args_parser as classify_parser
    from training.classify.train import main as train_classify
    from training.data.fashion_mnist import export_fashion_mnist
    from training.data.synth_detect import synth_detect
    from training.detection.train import get_args_parser as detect_parser
    from training.detection.train import main as train_detect

    per_class, epochs = (50, 2) if args.quick else (200, 4)
    with tempfile.TemporaryDirectory(prefix="int8-accuracy-") as tmp:
        if args.out:  # a fresh folder under it each run: quantize never overwrites
            args.out.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=args.out)) if args.out else Path(tmp)
        rows = []
        recipe = ["--backbone", "efficientnet_lite0", "--mode", "feature-extract",
                  "--epochs", str(epochs), "--img-size", "96", "--batch-size", "50",
                  "--lr", "3e-3", "--no-progress"]
        fashion = work / "fashion-data"
        export_fashion_mnist(fashion, per_class=per_class, val_per_class=per_class // 2, seed=0)
        digits = digits_tree(work / "digits-data")
        for name, data in (("fashion-mnist", fashion), ("sklearn-digits", digits)):
            start = time.perf_counter()
            train_classify(classify_parser().parse_args(
                ["--data", str(data), "--out", str(work / name), "--name", name, *recipe]))
            rows.append(run(name, work / name, work))
            rows[-1]["minutes"] = (time.perf_counter() - start) / 60
            print(json.dumps(rows[-1]), flush=True)
        yaml = synth_detect(work / "synth-data", images=120 if args.quick else 240, seed=0,
                            img_size=256)
        start = time.perf_counter()
        train_detect(detect_parser().parse_args([
            "--data", str(yaml), "--out", str(work / "garments"), "--epochs",
            "6" if args.quick else "16", "--img-size", "192", "--batch-size", "8",
            "--no-progress"]))
        rows.append(run("synth-detect", work / "garments", work))
        rows[-1]["minutes"] = (time.perf_counter() - start) / 60
        print(json.dumps(rows[-1]), flush=True)

    goals = {"top1": 0.005, "map50_95": 0.01}
    print(f"\n{'model':16s} {'metric':9s} {'val imgs':>8s} {'fp32':>7s} {'int8':>7s} "
          f"{'drop':>8s} {'goal':>6s} {'class':>7s} {'gate':>8s} {'img/s fp32 → int8 (b8)':>24s}")
    for r in rows:
        speed = r["speed"]
        print(f"{r['name']:16s} {r['metric']:9s} {r['val_images'] or '':>8} {r['fp32']:7.4f} "
              f"{r['int8']:7.4f} {r['drop']:+8.4f} {'<=' + str(goals[r['metric']]):>6s} "
              f"{r['max_class_drop']:+7.3f} {'accepted' if r['accepted'] else 'refused':>8s} "
              f"{speed['fp32']:9.1f} → {speed.get('int8', float('nan')):7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
