"""``ocellus predict``: run an export on image files, or send them to a running server
(``--url``), and print the results as JSON, one line per image."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from cli import remote_predict

# The flags of a run in this process, refused with --url (and `remote_predict.OPTIONS` without).
LOCAL_OPTIONS = ("device", "cache_dir")


def get_args_parser(prog: str = "ocellus predict") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--model", default=None,
                   help="export directory (default: the default ImageNet classifier); with "
                        "--url, a served model's name (default: the server's for --task)")
    p.add_argument("--top-k", type=int, default=None,
                   help="classes per image (default 5; with --url, the server's default)")
    local = p.add_argument_group("in this process (without --url)")
    local.add_argument("--device", default=None, help="default cpu")
    local.add_argument("--cache-dir", type=Path, default=None,
                       help="where the default model's export is kept (default "
                            "~/.cache/ocellus)")
    remote_predict.add_arguments(p)
    return p


def _misplaced(args: argparse.Namespace) -> str | None:
    """What is wrong with flags that this run would ignore, if any were given."""
    def given(names: tuple[str, ...]) -> str:
        return ", ".join(f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is not None)

    if args.url is None:
        flags = given(remote_predict.OPTIONS)
        return f"{flags}: only with --url" if flags else None
    if flags := given(LOCAL_OPTIONS):
        return f"{flags}: only without --url"
    task = args.task or remote_predict.DEFAULT_TASK
    for other, names in remote_predict.TASK_OPTIONS.items():
        if other != task and (flags := given(names)):
            return f"{flags}: only with --task {other}"
    return None


def main(args: argparse.Namespace) -> int:
    if problem := _misplaced(args):
        get_args_parser().error(problem)
    if args.url is not None:
        return remote_predict.main(args)

    from models.imaging import decode_image
    from models.predictor import load_predictor

    if args.model is None:
        from models.defaults import default_classifier_export

        args.model = default_classifier_export(args.cache_dir
                                               or Path.home() / ".cache" / "ocellus")
    predictor = load_predictor(Path(args.model), device=args.device or "cpu")
    for path in args.images:
        # Decoded as the service decodes it, so that both answer the same.
        image = decode_image(path.read_bytes(), target_size=predictor.preprocessing.decode_size)
        (result,) = predictor.predict([image.tensor], original_sizes=[(image.width, image.height)],
                                      top_k=5 if args.top_k is None else args.top_k)
        items = [asdict(r) for r in result]
        print(json.dumps({"file": str(path), "width": image.width, "height": image.height,
                          "results": items}))
    return 0
