"""The accuracy int8 and bf16 give up, on three trained models, side by side.

For each model it trains an fp32 export with ``ocellus train``, makes its int8
variant with ``ocellus quantize`` (calibrated on the training split, scored on
the validation split with the same `Predictor`), scores the ``bf16`` backend
(bfloat16 autocast, service/backends.py) on the same split the same way, and
prints one table row: the fp32, int8 and bf16 metric, the drops, the largest
per-class recall drop of int8, whether the gate accepted it, and the fp32, int8
and bf16 model-only img/s at batch 8.

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
from models.tasks import get_task, resolve
from service.backends import build_bf16
from training.quantize import EXIT_WRITTEN, splits
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


def _bf16(path: Path):
    """The fp32 export's predictor with its forward in bf16 autocast."""
    predictor = load_predictor(path, precision="fp32")
    predictor.runtime = build_bf16(predictor, torch.zeros(1, 3, 8, 8))
    return predictor


def _img_per_s(path: Path, precision: str, seconds: float = 2.0) -> float:
    predictor = (_bf16(path) if precision == "bf16"
                 else load_predictor(path, precision=precision))
    x = torch.randn(8, 3, predictor.input_size, predictor.input_size)
    with torch.inference_mode():
        predictor.forward(x)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            predictor.forward(x)
            n += 8
    return n / (time.perf_counter() - start)


def run(name: str, export: Path, work: Path, data: Path) -> dict:
    report = work / f"{name}-quantize.json"
    code = quantize(quantize_parser().parse_args([
        "--model", str(export), "--out", str(work / f"{name}-int8"), "--report", str(report)]))
    body = json.loads(report.read_text())
    metric = body["metric"]
    fp32, int8 = body["evaluation"]["fp32"][metric], body["evaluation"]["int8"][metric]
    bf16 = _bf16(export)
    score = resolve(get_task(bf16.task).retrain).score_predictor
    bf16_metric = score(bf16, splits(bf16.task, data, bf16.manifest)[1])[metric]
    speed = {"fp32": _img_per_s(export, "fp32"), "bf16": _img_per_s(export, "bf16")}
    if code == EXIT_WRITTEN:
        speed["int8"] = _img_per_s(work / f"{name}-int8", "int8")
    return {"name": name, "metric": metric, "fp32": fp32, "int8": int8, "bf16": bf16_metric,
            "drop": fp32 - int8, "bf16_drop": fp32 - bf16_metric,
            "max_class_drop": body["drop"]["max_class_recall"],
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
            rows.append(run(name, work / name, work, data))
            rows[-1]["minutes"] = (time.perf_counter() - start) / 60
            print(json.dumps(rows[-1]), flush=True)
        yaml = synth_detect(work / "synth-data", images=120 if args.quick else 240, seed=0,
                            img_size=256)
        start = time.perf_counter()
        train_detect(detect_parser().parse_args([
            "--data", str(yaml), "--out", str(work / "garments"), "--epochs",
            "6" if args.quick else "16", "--img-size", "192", "--batch-size", "8",
            "--no-progress"]))
        rows.append(run("synth-detect", work / "garments", work, yaml))
        rows[-1]["minutes"] = (time.perf_counter() - start) / 60
        print(json.dumps(rows[-1]), flush=True)

    goals = {"top1": 0.005, "map50_95": 0.01}
    print(f"\n{'model':16s} {'metric':9s} {'val imgs':>8s} {'fp32':>7s} {'int8':>7s} "
          f"{'drop':>8s} {'goal':>6s} {'class':>7s} {'gate':>8s} {'bf16':>7s} {'drop':>8s} "
          f"{'img/s b8: fp32':>15s} {'int8':>6s} {'bf16':>6s}")
    for r in rows:
        speed = r["speed"]
        print(f"{r['name']:16s} {r['metric']:9s} {r['val_images'] or '':>8} {r['fp32']:7.4f} "
              f"{r['int8']:7.4f} {r['drop']:+8.4f} {'<=' + str(goals[r['metric']]):>6s} "
              f"{r['max_class_drop']:+7.3f} {'accepted' if r['accepted'] else 'refused':>8s} "
              f"{r['bf16']:7.4f} {r['bf16_drop']:+8.4f} {speed['fp32']:15.1f} "
              f"{speed.get('int8', float('nan')):6.1f} {speed['bf16']:6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
