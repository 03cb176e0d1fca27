"""``ocellus quantize``: an export → its int8 variant, calibrated, evaluated and gated.

1. Calibrate: NNCF's post-training quantisation of the model converted to
   OpenVINO, on up to ``--calib-images`` images of the export's own training
   data (``manifest.dataset.data``), or of ``--calib-data``, preprocessed exactly
   as served.
2. Evaluate fp32 and int8 with the same `Predictor` (only `forward` differs) on
   the export's validation split, or ``--eval-data``'s: top-1 and per-class recall
   for a classifier, mAP50-95 and per-class recall for a detector.
3. Gate: the task's metric may drop by at most ``--max-drop`` (default 0.005 of
   top-1, i.e. half a point, or 0.01 of mAP50-95), and no class's recall by more
   than ``--max-class-drop``.
   A refused model writes nothing at ``--out``; the exit code is 3.
Models with no labelled data here (the default ImageNet classifier and COCO
detector) take ``--unlabelled``: calibration on random crops of half of the
bundled real photos (models/photos.py), or on ``--calib-data``'s images, and a
gate on agreement with fp32 on the other half (`UNLABELLED_GATE`):

- classify: top-5 containment (fp32's top-1 among int8's top 5) over all
  photos, and top-1 agreement over the photos fp32 is confident about. Top-1
  agreement over all photos is reported, not gated: on photos outside the label
  set two classes at 0.1 each swap places under any change of arithmetic.
- detect: boxes matched at IoU 0.5 with the same class.

4. Write the int8 export (models/int8.py): the fp32 files, the IR, and a
   manifest with ``precision: "int8"`` and a ``quantization`` section holding the
   files' sha256s, the calibration, both evaluations and the drop (or, with
   ``--unlabelled``, the agreement). It appears at
   ``--out`` in one rename.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import v2

from models.agreement import agreement_report
from models.errors import DatasetError, OcellusError
from models.export import (
    MANIFEST_FILE,
    Manifest,
    fsync_dir,
    read_manifest,
    sha256_file,
    write_atomic,
)
from models.imaging import IMAGE_SUFFIXES
from models.int8 import INT8_FILES, INT8_XML, Forward, as_forward, openvino_config
from models.photos import photo_split, views
from models.predictor import BatchMajor, Predictor, load_predictor
from models.tasks import get_task, resolve
from training.images import read_image

log = logging.getLogger(__name__)

DEFAULT_MAX_DROP = {"top1": 0.005, "map50_95": 0.01}
# --unlabelled: the least agreement with fp32 on held-out real photos, per task.
UNLABELLED_GATE = {"classify": {"top5_containment": 0.95, "confident_top1": 0.95},
                   "detect": {"boxes_iou50": 0.9}}
# ... measured on at least this many held-out views (4 photos), and for a classifier on at
# least this many that fp32 is confident about: fewer are no evidence either way.
MIN_HELD_OUT_VIEWS, MIN_CONFIDENT = 24, 5
EXIT_WRITTEN, EXIT_REFUSED = 0, 3


def get_args_parser(prog: str = "ocellus quantize") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="the fp32 export")
    p.add_argument("--out", type=Path, required=True, help="where the int8 export goes")
    p.add_argument("--calib-data", type=Path, default=None,
                   help="images to calibrate on (an ImageFolder or a DATA.yaml); default the "
                        "export's training data")
    p.add_argument("--calib-images", type=int, default=300)
    p.add_argument("--eval-data", type=Path, default=None,
                   help="labelled data whose val split scores both models; default the "
                        "export's own")
    p.add_argument("--max-drop", type=float, default=None,
                   help="the most the task's metric may fall (default: top1 0.005, "
                        "map50_95 0.01)")
    p.add_argument("--max-class-drop", type=float, default=0.05,
                   help="the most any class's recall may fall")
    p.add_argument("--unlabelled", action="store_true",
                   help="no labelled data exists (the default ImageNet and COCO models): "
                        "calibrate on --calib-data's images or on half of the bundled real "
                        "photos, and gate on agreement with fp32 on the other half")
    p.add_argument("--report", type=Path, default=None, help="also write the report here")
    return p


def _training_data(manifest: Manifest) -> Path:
    data = (manifest.dataset or {}).get("data")
    if not data or not Path(data).exists():
        raise DatasetError(f"{manifest.name}: the export's training data ({data}) is not "
                           f"here; name images with --calib-data and labelled data with "
                           f"--eval-data")
    return Path(data)


def splits(task: str, data: Path, manifest: Manifest) -> tuple[list[Path], Any]:
    """The training image files of `data`, and its val split as the task's scorer takes it.

    A classifier's ImageFolder is split as the export was trained (its
    ``val_fraction`` and seed), so the val split is the one its manifest scored.
    """
    if task == "classify":
        from training.classify.data import load_splits

        args = manifest.training.get("args", {})
        found = load_splits(data, val_fraction=args.get("val_fraction", 0.2),
                            seed=args.get("seed", 0))
        return [p for p, _ in found.train], found.val
    from training.detection.dataset import load_data_yaml

    return list(load_data_yaml(data, check_labels=False).train), data


def spread(files: list[Path], limit: int) -> list[Path]:
    """Up to `limit` of `files`, spread over the set (every k-th)."""
    return files[::max(1, len(files) // limit)][:limit]


def gate(scores: dict[str, dict[str, Any]], class_drops: dict[str, float], metric: str,
         max_drop: float, max_class_drop: float) -> list[str]:
    """Why the int8 model is refused (nothing: accepted)."""
    fp32, int8 = scores["fp32"][metric], scores["int8"][metric]
    reasons = []
    if fp32 - int8 > max_drop + 1e-9:
        reasons.append(f"{metric} fell by {fp32 - int8:.4f} ({fp32:.4f} fp32 → {int8:.4f} "
                       f"int8), more than --max-drop {max_drop}")
    reasons += [f"class {label!r}: recall fell by {d:.4f}, more than --max-class-drop "
                f"{max_class_drop}" for label, d in class_drops.items()
                if d > max_class_drop + 1e-9]
    return reasons


def to_openvino(predictor: Predictor) -> Any:
    """The predictor's model (with `Predictor.batch_major`) as an OpenVINO model, any batch."""
    import openvino as ov

    size = predictor.input_size
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ov.convert_model(BatchMajor(predictor).eval(),
                                example_input=torch.zeros(1, 3, size, size),
                                input=[(-1, 3, size, size)])


def quantize_ov(model: Any, inputs: list[torch.Tensor]) -> Any:
    """NNCF's post-training quantisation of an OpenVINO model, calibrated on `inputs`.

    MIXED (asymmetric activations) with full bias correction: on a Fashion-MNIST
    export, top-1 0.814 → 0.814, where the defaults gave 0.806 to 0.808 and MIXED
    alone 0.802.
    """
    import nncf

    return nncf.quantize(model, nncf.Dataset([x[None].numpy() for x in inputs]),
                         subset_size=len(inputs), preset=nncf.QuantizationPreset.MIXED,
                         fast_bias_correction=False)


def _labelled_check(predictor: Predictor, int8: Forward, val: Any, metric: str,
                    max_drop: float, max_class_drop: float
                    ) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Score fp32 and int8 on `val` with one Predictor: (evaluation, drop, reasons)."""
    score = resolve(get_task(predictor.task).retrain).score_predictor
    scores = {"fp32": score(predictor, val)}
    predictor.runtime = int8  # only the forward differs between the two
    try:
        scores["int8"] = score(predictor, val)
    finally:
        predictor.runtime = None
    drops = {label: scores["fp32"]["per_class"][label]["recall"] - stats["recall"]
             for label, stats in scores["int8"]["per_class"].items()}
    drop = {metric: scores["fp32"][metric] - scores["int8"][metric],
            "max_class_recall": max(drops.values(), default=0.0)}
    return scores, drop, gate(scores, drops, metric, max_drop, max_class_drop)


def _unlabelled_inputs(predictor: Predictor, calib_data: Path | None, limit: int
                       ) -> list[torch.Tensor]:
    """Calibration inputs: `calib_data`'s images, or seeded random crops and flips of
    the calibration half of the bundled photos."""
    if calib_data is not None:
        files = sorted(f for f in Path(calib_data).rglob("*")
                       if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"{calib_data}: no images to calibrate on")
        side = predictor.preprocessing.decode_size
        return [predictor.preprocess(read_image(f, target_size=side))[0]
                for f in spread(files, limit)]
    photos = photo_split()[0]
    if not photos:
        raise DatasetError("no bundled photos to calibrate on (scikit-image, scikit-learn "
                           "or Debian's darknet); name a folder of images with --calib-data")
    crop = v2.Compose([v2.RandomResizedCrop(predictor.input_size, scale=(0.25, 1.0)),
                       v2.RandomHorizontalFlip()])
    with torch.random.fork_rng(devices=[]):  # seeded crops, the caller's random state untouched
        torch.manual_seed(0)
        return [predictor.preprocess(crop(photos[i % len(photos)]))[0] for i in range(limit)]


def _unlabelled_check(predictor: Predictor, int8: Forward
                      ) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Agreement with fp32 on the held-out half of the bundled photos (every view of
    each): (evaluation, agreement, reasons)."""
    held_out = photo_split()[1]
    images = [v for photo in held_out for v in views(photo)]
    if not images:
        raise DatasetError("no bundled photos to check the int8 model on (scikit-image, "
                           "scikit-learn or Debian's darknet)")
    inputs, metas = zip(*(predictor.preprocess(im) for im in images), strict=True)
    batch = torch.stack(inputs)
    with torch.inference_mode():
        report = agreement_report(predictor, predictor.eager_forward(batch), int8(batch),
                                  list(metas))
    floors = UNLABELLED_GATE[predictor.task]
    reasons = [f"{name} {report[name]:.4f} < {floor} against fp32 on {len(images)} held-out "
               f"photo views" for name, floor in floors.items() if report[name] < floor]
    if len(images) < MIN_HELD_OUT_VIEWS:
        reasons.append(f"only {len(images)} held-out photo views, fewer than "
                       f"{MIN_HELD_OUT_VIEWS}: install scikit-image, scikit-learn or Debian's "
                       f"darknet (`make system-deps`) for more photos")
    if report.get("confident_images", MIN_CONFIDENT) < MIN_CONFIDENT:
        reasons.append(f"fp32 is confident about only {report['confident_images']} held-out "
                       f"views, fewer than {MIN_CONFIDENT}: too few to compare top-1 on")
    evaluation = {"data": f"{len(images)} views of {len(held_out)} held-out bundled photos "
                          "(models/photos.py)", "gate": floors}
    return evaluation, report, reasons


def main(args: argparse.Namespace) -> int:
    """`quantize`, printing whether the int8 export was accepted; exit 3 when refused."""
    report = quantize(args)
    print(json.dumps({k: report[k] for k in ("accepted", "drop", "agreement", "reasons")
                      if k in report}, indent=2))
    return EXIT_WRITTEN if report["accepted"] else EXIT_REFUSED


def quantize(args: argparse.Namespace) -> dict[str, Any]:
    """Calibrate, evaluate and gate (the module docstring); returns the report, whose
    ``accepted`` says whether the int8 export was written at ``args.out``.

    Raises:
        OcellusError: The export is not fp32, ``args.out`` exists, or the options clash.
        DatasetError: No images to calibrate or evaluate on.
    """
    import openvino as ov

    predictor = load_predictor(args.model, precision="fp32")
    manifest = predictor.manifest
    if manifest.precision != "fp32":
        raise OcellusError(f"{args.model} is already {manifest.precision}; quantize its fp32 "
                           f"export")
    task = get_task(manifest.task)
    metric = task.metric
    max_drop = DEFAULT_MAX_DROP[metric] if args.max_drop is None else args.max_drop
    if args.out.exists():
        raise OcellusError(f"{args.out} exists; name a new folder for the int8 export")

    if args.unlabelled:
        if args.eval_data is not None:
            raise OcellusError("--eval-data is labelled data: drop --unlabelled to gate on it")
        calib_data = args.calib_data
        inputs = _unlabelled_inputs(predictor, calib_data, args.calib_images)
    else:
        calib_data = args.calib_data or _training_data(manifest)
        eval_data = args.eval_data or _training_data(manifest)
        train_files, val = splits(task.name, calib_data, manifest)
        if not train_files:
            raise DatasetError(f"{calib_data}: no training images to calibrate on")
        if eval_data != calib_data:
            val = splits(task.name, eval_data, manifest)[1]
        side = predictor.preprocessing.decode_size
        inputs = [predictor.preprocess(read_image(f, target_size=side))[0]
                  for f in spread(train_files, args.calib_images)]
    log.info("calibrating on %d images of %s", len(inputs), calib_data or "bundled photos")
    quantized = quantize_ov(to_openvino(predictor), inputs)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.", dir=args.out.parent))
    try:
        for f in Path(args.model).iterdir():  # the fp32 export's own files
            if f.is_file():
                shutil.copy2(f, work / f.name)
        ov.save_model(quantized, str(work / INT8_XML), compress_to_fp16=False)
        int8 = as_forward(ov.Core().compile_model(str(work / INT8_XML), "CPU",
                                                  openvino_config()), predictor)
        if args.unlabelled:
            evaluation, found, reasons = _unlabelled_check(predictor, int8)
            measured, checks = {"agreement": found}, evaluation.pop("gate")
        else:
            scores, found, reasons = _labelled_check(predictor, int8, val, metric, max_drop,
                                                     args.max_class_drop)
            evaluation = {"data": str(eval_data), "split": "val", **scores}
            measured = {"drop": found}
            checks = {"max_drop": max_drop, "max_class_drop": args.max_class_drop}
        report = {
            "model": str(args.model), "task": task.name, "metric": metric,
            "toolchain": f"openvino {version('openvino')}, nncf {version('nncf')}",
            "calibration": {"images": len(inputs),
                            "data": str(calib_data or "bundled photos, random crops")},
            "evaluation": evaluation, **measured, "gate": checks,
            "accepted": not reasons, "reasons": reasons,
        }
        if args.report:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            args.report.write_text(json.dumps(report, indent=2))
        if reasons:
            log.error("int8 refused: %s", "; ".join(reasons))
            return report
        manifest.precision = "int8"
        manifest.quantization = {
            **{k: report[k] for k in ("toolchain", "calibration", "evaluation", *measured,
                                      "gate")},
            "files": {name: sha256_file(work / name) for name in INT8_FILES}}
        write_atomic(work / MANIFEST_FILE, json.dumps(manifest.to_dict(), indent=2) + "\n")
        os.replace(work, args.out)
        fsync_dir(args.out.parent)
    finally:  # refused or failed: nothing is left; written: `work` is now `args.out`
        shutil.rmtree(work, ignore_errors=True)
    read_manifest(args.out)
    log.info("wrote %s (int8; %s)", args.out, json.dumps(measured))
    return report
