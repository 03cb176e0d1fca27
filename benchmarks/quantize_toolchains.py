"""Which int8 toolchain, measured on this machine: ONNX Runtime, OpenVINO + NNCF, PT2E.

    .venv/bin/python benchmarks/quantize_toolchains.py [--models effnet,resnet18,nanodet,yolo]
        [--seconds 2] [--skip pt2e]

For each model it prints img/s at batch 1 and 8 of every path, side by side in
one run, and each int8 path's agreement with eager fp32 on real photos (top-1 for
classifiers; boxes at IoU 0.9 for detectors, `service.backends.agreement`):

- eager fp32 channels_last (the reference) and ``compiled`` (frozen TorchScript,
  Ocellus's fp32 fast path);
- ONNX Runtime 1.31: fp32, and int8 static QDQ (per-channel weights, MinMax
  calibration on real photos);
- OpenVINO 2026.4: fp32, and int8 from NNCF's post-training quantisation;
- PT2E: torchao's X86InductorQuantizer, then torch.compile (Inductor).

EfficientNet-Lite0 and NanoDet have their real weights (the default exports);
ResNet-18 and the YOLO-style detector have random weights, so their agreement
says little and only their speed counts. Calibration uses half of the photos;
agreement is measured on all of them. The toolchains are not dependencies of
Ocellus: install them in the venv first (`pip install onnxruntime onnx onnxscript
openvino nncf torchao`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree as pytree

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.agreement import agreement  # noqa: E402
from models.int8 import as_forward, openvino_config  # noqa: E402
from models.photos import real_images  # noqa: E402
from models.predictor import BatchMajor, Predictor, load_predictor  # noqa: E402
from service.backends import build_compiled  # noqa: E402
from training.quantize import quantize_ov, to_openvino  # noqa: E402

THREADS = torch.get_num_threads()


def _images_per_second(fn: Callable[[torch.Tensor], Any], batch: torch.Tensor,
                       seconds: float) -> float:
    fn(batch)
    fn(batch)
    best = float("inf")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        fn(batch)
        best = min(best, time.perf_counter() - start)
    return len(batch) / best


def _onnx(predictor: Predictor, path: Path) -> Path:
    module = BatchMajor(predictor).eval()
    example = torch.zeros(2, 3, predictor.input_size, predictor.input_size)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=["input"],
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
                          dynamo=True, optimize=True, verbose=False)
    return path


def ort_paths(predictor: Predictor, calib: torch.Tensor, tmp: Path, spec) -> dict:
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = _onnx(predictor, tmp / "model.onnx")
    pre = tmp / "model.pre.onnx"
    quant_pre_process(str(fp32), str(pre))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": calib[i:i + 1].numpy()} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    int8 = tmp / "model.int8.onnx"
    quantize_static(str(pre), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)

    def session(path: Path):
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run(x: torch.Tensor):
            outs = sess.run(None, {"input": x.contiguous().numpy()})
            return pytree.tree_unflatten([torch.from_numpy(o) for o in outs], spec)
        return run

    return {"ort fp32": session(fp32), "ort int8": session(int8)}


def openvino_paths(predictor: Predictor, calib: torch.Tensor) -> dict:
    """Ocellus's own int8 path (training/quantize.py, models/int8.py), and its fp32 twin."""
    import openvino as ov

    model = to_openvino(predictor)
    quantized = quantize_ov(model, list(calib))
    core = ov.Core()
    return {f"openvino {name}": as_forward(core.compile_model(m, "CPU",
                                                              openvino_config(THREADS)),
                                           predictor)
            for name, m in (("fp32", model), ("int8", quantized))}


def pt2e_path(predictor: Predictor, calib: torch.Tensor) -> dict:
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    module = BatchMajor(predictor).eval()
    size = predictor.input_size
    example = (torch.zeros(8, 3, size, size),)
    with torch.no_grad():
        exported = torch.export.export(module, example).module()
        quantizer = xiq.X86InductorQuantizer().set_global(
            xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        for i in range(len(calib)):
            prepared(calib[i:i + 1].expand(8, -1, -1, -1).contiguous())
        converted = convert_pt2e(prepared)
        compiled = torch.compile(converted, dynamic=False)

    @torch.no_grad()
    def run(x: torch.Tensor):  # compiled at batch 8 only; pad batch 1 would mislead
        return compiled(x)
    return {"pt2e int8 (inductor)": run}


def models(names: list[str], cache: Path) -> dict[str, Predictor]:
    from models.classification.classifier import ImageClassifier
    from models.defaults import default_classifier_export, default_detector_export
    from models.detection.detector import Detector
    from models.export import Manifest, save_export

    out: dict[str, Predictor] = {}
    if "effnet" in names:
        out["EfficientNet-Lite0 (ImageNet)"] = load_predictor(
            default_classifier_export(cache, "efficientnet_lite0"))
    if "resnet18" in names:
        torch.manual_seed(0)
        model = ImageClassifier("resnet18", 1000, backbone_weights=None)
        manifest = Manifest(task="classify", labels=[str(i) for i in range(1000)],
                            preprocessing=model.backbone.preprocessing.to_dict(),
                            architecture={"name": "classifier", "args": {
                                "backbone": "resnet18", "num_classes": 1000}})
        path = Path(tempfile.mkdtemp()) / "resnet18"
        save_export(model, path, manifest)
        out["ResNet-18 (random)"] = load_predictor(path)
    if "nanodet" in names:
        nanodet = default_detector_export(cache)
        if nanodet is not None:
            out["NanoDet-g-416 (COCO)"] = load_predictor(nanodet)
    if "yolo" in names:
        torch.manual_seed(0)
        model = Detector("efficientnet_lite0", 5, img_size=320, backbone_weights=None)
        manifest = Manifest(task="detect", labels=[str(i) for i in range(5)],
                            preprocessing=model.preprocessing.to_dict(),
                            architecture={"name": "detector", "args": model.model_args})
        path = Path(tempfile.mkdtemp()) / "yolo"
        save_export(model, path, manifest)
        out["YOLO-style, Lite0, 320 (random)"] = load_predictor(path)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="effnet,resnet18,nanodet,yolo")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--skip", default="", help="comma-separated: ort,openvino,pt2e")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    skip = set(filter(None, args.skip.split(",")))
    cache = Path(os.environ.get("OCELLUS_CACHE_DIR", Path.home() / ".cache" / "ocellus"))
    for title, predictor in models(args.models.split(","), cache).items():
        photos = real_images(predictor.manifest, limit=32)
        inputs, metas = zip(*(predictor.preprocess(im) for im in photos), strict=True)
        stacked = torch.stack(inputs)
        calib = stacked[::2].contiguous()
        size = predictor.input_size
        example = torch.zeros(2, 3, size, size)
        with torch.inference_mode():
            reference = predictor.forward(stacked)
        _, spec = pytree.tree_flatten(reference)
        paths: dict[str, Callable] = {"eager fp32": predictor.forward,
                                      "compiled fp32": build_compiled(predictor, example)}
        builders = {
            "ort": lambda p=predictor, c=calib, s=spec: ort_paths(p, c, Path(tempfile.mkdtemp()),
                                                                  s),
            "openvino": lambda p=predictor, c=calib: openvino_paths(p, c),
            "pt2e": lambda p=predictor, c=calib: pt2e_path(p, c)}
        for name, build in builders.items():
            if name in skip:
                continue
            started = time.perf_counter()
            try:
                built = build()
            except Exception as exc:  # noqa: BLE001 - a toolchain that fails is reported
                print(f"  {name}: failed to build: {type(exc).__name__}: {str(exc)[:300]}")
                continue
            print(f"  {name}: built in {time.perf_counter() - started:.1f} s", flush=True)
            paths.update(built)
        print(f"\n{title}, {size} px, {THREADS} threads, {len(photos)} photos "
              f"({len(calib)} for calibration)")
        print(f"{'path':28} {'b=1 img/s':>10} {'b=8 img/s':>10} {'agree':>7}")
        base = {}
        for name, fn in paths.items():
            with torch.inference_mode():
                one = (None if name.startswith("pt2e") else
                       _images_per_second(fn, stacked[:1].contiguous(), args.seconds))
                eight = _images_per_second(fn, stacked[:8].contiguous(), args.seconds)
                if name.startswith("pt2e"):
                    outs = [fn(stacked[i:i + 8]) for i in range(0, len(stacked) - 7, 8)]
                    n = 8 * len(outs)
                    cand = pytree.tree_map(lambda *t: torch.cat(t), *outs) if len(outs) > 1 \
                        else outs[0]
                    ref = pytree.tree_map(lambda t, n=n: t[:n], reference)
                    score = agreement(predictor, ref, cand, list(metas[:n]))
                else:
                    score = agreement(predictor, reference, fn(stacked), list(metas))
            base.setdefault("one", one)
            base.setdefault("eight", eight)
            one_s = f"{one:10.1f}" if one else f"{'-':>10}"
            print(f"{name:28} {one_s} {eight:10.1f} {score:7.3f}   "
                  f"(x{(one or 0) / base['one']:.2f} / x{eight / base['eight']:.2f} of eager)",
                  flush=True)


if __name__ == "__main__":
    main()
