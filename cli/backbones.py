"""``ocellus backbones``: the backbone catalog, one row per backbone.

A thin layer over `models.backbones.summary.summarize`; a table, or JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.backbones.summary import BackboneSummary

COLUMNS = (  # header, width, the row's text
    ("backbone", 18, lambda s: s.name),
    ("params M", 8, lambda s: f"{s.params_m:.1f}"),
    ("GFLOPs", 6, lambda s: f"{s.gflops:.2f}"),
    ("input", 5, lambda s: str(s.input_size)),
    ("features", 8, lambda s: str(s.num_features)),
    ("weights", 7, lambda s: "here" if s.weights_available else "missing"),
    ("detect", 9, lambda s: f"yes, >={s.min_detect_size}" if s.detect else "no"),
)


def get_args_parser(prog: str = "ocellus backbones") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="List the backbones a classifier or "
                                "detector can be trained on, with their cost and weights.")
    p.add_argument("--json", action="store_true",
                   help="a JSON list, one object per backbone, with every field")
    return p


def format_table(summaries: list[BackboneSummary]) -> str:
    """The summaries as an aligned text table, with what the columns mean."""
    lines = [
        "params: without the ImageNet head. GFLOPs: one forward at the input size, "
        "a multiply-add counted as 2.",
        "weights: the ImageNet weights are on this machine (torch hub cache or package) "
        "or missing. detect: smallest --img-size.",
        "",
        "  ".join(f"{h:<{w}}" for h, w, _ in COLUMNS).rstrip(),
    ]
    lines += ["  ".join(f"{cell(s):<{w}}" for _, w, cell in COLUMNS).rstrip() for s in summaries]
    missing = [s for s in summaries if not s.weights_available]
    if files := [s for s in missing if s.weights_file]:
        lines += ["", "Missing weights are fetched on first use, or read from these files "
                  "(offline: copy them there):"]
        lines += [f"  {s.name}: {s.weights_file}" for s in files]
    if notes := [s for s in missing if not s.weights_file]:
        lines += ["", "Missing weights that come with a Python package:"]
        lines += [f"  {s.name}: {s.weights_note}" for s in notes]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from models.backbones import list_backbones
    from models.backbones.summary import summarize

    summaries = [summarize(name) for name in list_backbones()]
    if args.json:
        print(json.dumps([s.to_dict() for s in summaries], indent=2))
    else:
        print(format_table(summaries))
    return 0
