"""``ocellus registry``: list, publish, promote and roll back registry versions.

A thin layer over `models.registry.ModelRegistry`; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def get_args_parser(prog: str = "ocellus registry") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Manage a model registry folder.")
    p.add_argument("--registry", type=Path, required=True, help="the registry folder")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="names, versions and the current version of each")
    pub = sub.add_parser("publish", help="copy an export in as a new version")
    pub.add_argument("--name", required=True)
    pub.add_argument("export", type=Path)
    pub.add_argument("--promote", action="store_true", help="and make it current")
    pub.add_argument("--if-missing", action="store_true",
                     help="do nothing when the name already has a current version")
    pro = sub.add_parser("promote", help="make a version current")
    pro.add_argument("--name", required=True)
    pro.add_argument("version")
    rol = sub.add_parser("rollback", help="make the previous promotion current again")
    rol.add_argument("--name", required=True)
    seed = sub.add_parser("seed-defaults", help="publish and promote the default classifier "
                          "as 'imagenet' and detector as 'coco' (their int8 variants where "
                          "`ocellus defaults` made them), each when its name has no current "
                          "version")
    seed.add_argument("--cache-dir", type=Path, default=None,
                      help="where the default exports are built (OCELLUS_CACHE_DIR)")
    return p


def main(args: argparse.Namespace) -> int:
    from models.registry import ModelRegistry

    reg = ModelRegistry(args.registry)
    out: dict = {}
    if args.action == "publish":
        if args.if_missing and reg.current(args.name) is not None:
            out = {"name": args.name, "current": reg.current(args.name), "published": None}
        else:
            version = reg.publish(args.name, args.export)
            if args.promote:
                reg.promote(args.name, version, reason="ocellus registry publish --promote")
            out = {"name": args.name, "published": version, "current": reg.current(args.name)}
    elif args.action == "promote":
        reg.promote(args.name, args.version, reason="ocellus registry promote")
        out = {"name": args.name, "current": reg.current(args.name)}
    elif args.action == "rollback":
        out = {"name": args.name, "current": reg.rollback(args.name, reason="ocellus registry "
                                                                           "rollback")}
    elif args.action == "seed-defaults":
        out = _seed_defaults(reg, args.cache_dir)
    else:
        out = {n: {"current": reg.current(n), "versions": reg.versions(n)} for n in reg.names()}
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _seed_defaults(reg, cache_dir: Path | None) -> dict:
    """Publish and promote each default model whose name has no current version: its int8
    variant where `ocellus defaults` made one that passed its gate, as `ocellus serve`
    serves without a registry, else its fp32 export. A replica on a GPU, or with a backend
    other than auto or int8, serves an int8 export's fp32 weights (service/backends.py)."""
    from models.defaults import default_classifier_export, default_detector_export, served_variant
    from service.settings import Settings

    cache_dir = cache_dir or Settings().cache_dir
    seeded, exports = {}, {}
    for name, build in (("imagenet", default_classifier_export),
                        ("coco", default_detector_export)):
        if reg.current(name) is None and (export := build(cache_dir)) is not None:
            export = served_variant(export)
            version = reg.publish(name, export)
            reg.promote(name, version, reason="ocellus registry seed-defaults")
            seeded[name], exports[name] = version, str(export)
    return {"seeded": seeded, "exports": exports, "names": reg.names()}
