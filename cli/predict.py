"""``ocellus predict``: run an export on image files and print the results as JSON."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path


def get_args_parser(prog: str = "ocellus predict") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--model", type=Path, default=None,
                   help="export directory (default: the default ImageNet classifier)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "ocellus",
                   help="where the default model's export is kept")
    return p


def main(args: argparse.Namespace) -> int:
    from models.imaging import decode_image
    from models.predictor import load_predictor

    if args.model is None:
        from models.defaults import default_classifier_export

        args.model = default_classifier_export(args.cache_dir)
    predictor = load_predictor(args.model, device=args.device)
    for path in args.images:
        image = decode_image(path.read_bytes())
        (result,) = predictor.predict([image.tensor], top_k=args.top_k)
        items = [asdict(r) for r in result]
        print(json.dumps({"file": str(path), "width": image.width, "height": image.height,
                          "results": items}))
    return 0
