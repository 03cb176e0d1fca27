"""The int8 variant of an export, and the runtime that serves it (OpenVINO).

``ocellus quantize`` (training/quantize.py) writes an int8 export: the fp32
export's files, plus an OpenVINO IR (``model.int8.xml`` and ``model.int8.bin``)
calibrated by NNCF, whose sha256s the manifest's ``quantization.files`` records,
and ``precision: "int8"``. The fp32 weights stay: they rebuild the architecture
(postprocessing reads its strides and anchors) and remain the reference the
int8 model is checked against.

Why OpenVINO: measured side by side on this project's 2-core Zen 5 machine
(benchmarks/quantize_toolchains.py; img/s at batch 1 / 8):

- EfficientNet-Lite0: eager fp32 72 / 80, ONNX Runtime int8 345 / 396, OpenVINO
  int8 395 / 469, PT2E + Inductor int8 - / 117;
- ResNet-18: eager 39 / 56, ONNX Runtime int8 176 / 208, OpenVINO int8 215 / 229;
- NanoDet-g-416: eager 39 / 46, ONNX Runtime int8 128 / 133, OpenVINO int8 160 / 161.

On a Fashion-MNIST export (500 val images, top-1 0.814) both int8 paths lost 0.6
point with default settings; OpenVINO with NNCF's MIXED preset and full bias
correction lost none (training/quantize.py). OpenVINO is 15-25% faster, so it is
the one int8 path. The int8 model runs on the CPU only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils import _pytree as pytree

from models.errors import ExportError
from models.export import sha256_file

if TYPE_CHECKING:
    from models.predictor import Predictor

INT8_XML = "model.int8.xml"
INT8_BIN = "model.int8.bin"
INT8_FILES = (INT8_XML, INT8_BIN)

Forward = Callable[[torch.Tensor], Any]


def verify_int8_files(path: Path, quantization: dict[str, Any]) -> Path:
    """The IR's .xml path, once both files are there and match the manifest's sha256s.

    Raises:
        ExportError: A missing file, or one whose hash differs.
    """
    files = quantization.get("files") or {}
    for name in INT8_FILES:
        expected = files.get(name)
        file = path / name
        if not expected:
            raise ExportError(f"{path}: the manifest's quantization.files names no {name}")
        if not file.is_file():
            raise ExportError(f"{path}: {name} not found (an int8 export needs it)")
        actual = sha256_file(file)
        if actual != expected:
            raise ExportError(f"{file}: sha256 mismatch: the manifest expects {expected}, the "
                              f"file has {actual}. It was modified or belongs to another export.")
    return path / INT8_XML


def openvino_config(threads: int | None = None) -> dict[str, Any]:
    """CPU plugin settings: fp32 for what is not int8 (the plugin would pick bf16 on a CPU
    that has it), latency mode, and torch's thread count."""
    return {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}


def as_forward(compiled: Any, predictor: Predictor) -> Forward:
    """An OpenVINO compiled model as a `Predictor.forward`: same output structure.

    The IR's outputs are the leaves of `Predictor.batch_major`'s outputs, in
    order; an eager pass at batch 1 gives the structure to rebuild.
    """
    size = predictor.input_size
    with torch.inference_mode():
        _, spec = pytree.tree_flatten(predictor.eager_forward(torch.zeros(1, 3, size, size)))
    outputs = compiled.outputs
    if len(outputs) != spec.num_leaves:
        raise ExportError(f"the int8 model has {len(outputs)} outputs, the fp32 model "
                          f"{spec.num_leaves}; quantize the export again")

    def forward(batch: torch.Tensor) -> Any:
        result = compiled(batch.detach().to("cpu", torch.float32).contiguous().numpy())
        return pytree.tree_unflatten([torch.from_numpy(result[o]) for o in outputs], spec)

    return forward


def load_int8_forward(predictor: Predictor, path: Path) -> Forward:
    """The int8 forward of the export at `path` (its files verified).

    Raises:
        ExportError: Not an int8 export, a bad file, a non-CPU device, or no OpenVINO.
    """
    manifest = predictor.manifest
    if manifest.precision != "int8":
        raise ExportError(f"{path} is a {manifest.precision} export; `ocellus quantize` makes "
                          f"its int8 variant")
    if predictor.device.type != "cpu":
        raise ExportError(f"{path}: the int8 model runs on the CPU, not {predictor.device}; "
                          f"serve it with device cpu, or with backend eager for fp32")
    xml = verify_int8_files(path, manifest.quantization)
    try:
        import openvino as ov
    except ImportError as exc:
        raise ExportError(f"{path}: serving an int8 export needs OpenVINO "
                          f"(pip install openvino)") from exc
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(xml)), "CPU", openvino_config())
    return as_forward(compiled, predictor)
