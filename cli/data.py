"""``ocellus data ...``: thin parsers over training/data and training/detection functions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def fashion_mnist_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Turn Debian's dataset-fashion-mnist into an ImageFolder tree "
        "(train/ and val/). Needs: apt-get install dataset-fashion-mnist")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--per-class", type=int, default=100,
                   help="train images per class (0 = all 6000)")
    p.add_argument("--val-per-class", type=int, default=50, help="0 = all")
    p.add_argument("--val-from", choices=["test", "train"], default="test",
                   help="draw val from the test split, or from unused train images")
    p.add_argument("--include-test", action="store_true", help="also write the 10k test set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    return p


def fashion_mnist_main(args: argparse.Namespace) -> int:
    from training.data.fashion_mnist import export_fashion_mnist

    result = export_fashion_mnist(
        args.out, per_class=args.per_class or None, val_per_class=args.val_per_class or None,
        val_from=args.val_from, include_test=args.include_test, seed=args.seed,
        overwrite=args.overwrite)
    print(json.dumps({"root": str(result.root), "counts": result.counts,
                      "classes": list(result.classes)}))
    return 0


def synth_detect_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Write a YOLO-format detection data set by pasting "
        "Fashion-MNIST garments onto real photos: a stand-in for your own data.")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--img-size", type=int, default=416)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--overwrite", action="store_true")
    return p


def synth_detect_main(args: argparse.Namespace) -> int:
    from training.data.synth_detect import synth_detect

    yaml_path = synth_detect(args.out, images=args.images, seed=args.seed,
                             img_size=args.img_size, val_fraction=args.val_fraction,
                             overwrite=args.overwrite)
    print(yaml_path)
    return 0


def coco_to_yolo_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Convert COCO JSON to the YOLO layout.")
    p.add_argument("--annotations", type=Path, required=True, help="COCO instances JSON")
    p.add_argument("--images", type=Path, required=True, help="folder of the images")
    p.add_argument("--out", type=Path, required=True)
    return p


def coco_to_yolo_main(args: argparse.Namespace) -> int:
    from training.detection.coco import coco_to_yolo

    print(coco_to_yolo(args.annotations, args.images, args.out))
    return 0
