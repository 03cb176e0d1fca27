"""One way to predict: preprocess → forward → postprocess.

The service and the evaluation in training/ both use a `Predictor`, so what is
evaluated is exactly what is served. The three steps are separate methods so
the service can preprocess in a thread pool, run `forward` on a whole batch in
its inference thread, and postprocess per request.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.errors import TaskMismatchError
from models.export import Manifest, load_export
from models.int8 import load_int8_forward
from models.tasks import get_task, resolve


class Predictor:
    """The common surface of every task's predictor.

    Args:
        model: The model, in eval mode.
        manifest: Its export manifest (labels, preprocessing, task).
        device: ``"cpu"`` or ``"cuda"`` (or a ``torch.device``).
    """

    task: str = ""
    # Where the export was loaded from (`load_predictor`), and the int8 forward that
    # replaces the fp32 model when the export is int8 (models/int8.py).
    source: Path | None = None
    runtime: Callable[[torch.Tensor], Any] | None = None

    def __init__(self, model: nn.Module, manifest: Manifest,
                 device: str | torch.device = "cpu") -> None:
        if manifest.task != self.task:
            raise TaskMismatchError(
                f"{type(self).__name__} serves task {self.task!r}, the model's task is "
                f"{manifest.task!r}"
            )
        self.device = torch.device(device)
        self.manifest = manifest
        self.labels = list(manifest.labels)
        self.preprocessing = manifest.preprocess
        # channels_last is the faster memory layout for convolutions on CPU and GPU.
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)

    @property
    def input_size(self) -> int:
        return self.preprocessing.crop_size

    def preprocess(self, image: torch.Tensor, *, original_size: tuple[int, int] | None = None
                   ) -> tuple[torch.Tensor, Any]:
        """uint8 (3, H, W) RGB → (model input (3, S, S), per-image metadata).

        `original_size` is ``(width, height)`` of the upload when `image` was
        decoded at reduced size (tasks with geometric outputs map back to it).
        """
        raise NotImplementedError

    @property
    def precision(self) -> str:
        """What `forward` computes in: ``int8`` with an int8 runtime, else ``fp32``."""
        return "int8" if self.runtime is not None else "fp32"

    def forward(self, batch: torch.Tensor) -> Any:
        """(B, 3, S, S) → the model's raw outputs, batch-major (see `batch_major`).

        The int8 runtime when one is loaded, else the fp32 model (`eager_forward`).
        """
        if self.runtime is not None:
            return self.runtime(batch)
        return self.eager_forward(batch)

    @torch.inference_mode()
    def eager_forward(self, batch: torch.Tensor) -> Any:
        """The fp32 model on `batch`: the reference every other path is checked against."""
        batch = batch.to(self.device, non_blocking=True).contiguous(
            memory_format=torch.channels_last)
        return self.batch_major(self.model(batch))

    def batch_major(self, outputs: Any) -> Any:
        """The model's outputs with the batch first in every tensor.

        The service batches requests together and cuts one forward's outputs back
        into each request's rows (`service.backends.rows`), so every backend's
        outputs must be tensors, or tuples/lists/dicts of tensors, each ``(B, ...)``.
        A subclass whose model returns anything else (shared anchors, a named
        tuple) converts it here; every backend runs through this method.
        """
        return outputs

    def postprocess(self, outputs: Any, metas: list[Any], **options: Any) -> list[Any]:
        """Raw outputs of a batch → one result per image."""
        raise NotImplementedError

    def predict(self, images: list[torch.Tensor], *,
                original_sizes: list[tuple[int, int] | None] | None = None,
                **options: Any) -> list[Any]:
        """All three steps on a list of uint8 (3, H, W) images, as one batch.

        `original_sizes`: each image's ``(width, height)`` as uploaded, where it was
        decoded at reduced size (`decode_image`'s ``target_size``), as in `preprocess`.
        """
        sizes = original_sizes or [None] * len(images)
        inputs, metas = zip(*(self.preprocess(im, original_size=size)
                              for im, size in zip(images, sizes, strict=True)), strict=True)
        return self.postprocess(self.forward(torch.stack(inputs)), list(metas), **options)


class BatchMajor(nn.Module):
    """The predictor's model with its `Predictor.batch_major` step, as one module that traces
    and converts (TorchScript, OpenVINO): its outputs split by request as eager's do."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        self.model = predictor.model
        self._batch_major = predictor.batch_major

    def forward(self, x: torch.Tensor) -> Any:
        return self._batch_major(self.model(x))


def rows(outputs: Any, start: int, stop: int, batch_size: int) -> Any:
    """Rows ``start:stop`` of a batch's raw outputs: how the batcher cuts out each request.

    Every tensor must be batch-major (`Predictor.batch_major`): a tensor whose
    first dimension is not `batch_size` cannot be split by image, and cutting it
    by rows anyway would hand one request another's values, so it is an error.

    Raises:
        ValueError: A tensor that is not ``(batch_size, ...)``.
        TypeError: Outputs that are not tensors, tuples, lists or dicts of them.
    """
    if isinstance(outputs, torch.Tensor):
        if outputs.ndim == 0 or outputs.shape[0] != batch_size:
            raise ValueError(f"expected batch-major outputs of {batch_size} rows, got a tensor "
                             f"of shape {tuple(outputs.shape)}")
        return outputs[start:stop]
    if isinstance(outputs, tuple | list):
        return type(outputs)(rows(o, start, stop, batch_size) for o in outputs)
    if isinstance(outputs, dict):
        return {k: rows(v, start, stop, batch_size) for k, v in outputs.items()}
    raise TypeError(f"cannot split model outputs of type {type(outputs).__name__} by image")


def load_predictor(path: str | Path, *, device: str | torch.device = "cpu",
                   precision: str | None = None) -> Predictor:
    """Load an export and wrap it in its task's predictor (from `models.tasks.TASKS`).

    Args:
        precision: ``fp32`` or ``int8``; default the export's own on the CPU, and
            ``fp32`` on other devices (the int8 model runs on the CPU only). ``fp32`` of
            an int8 export gives its fp32 model (the service's eager reference).

    Raises:
        ExportError: See `load_export` and `models.int8.load_int8_forward`.
        TaskMismatchError: The manifest names a task this Ocellus does not know.
    """
    model, manifest = load_export(path, device=device)
    predictor_class: type[Predictor] = resolve(get_task(manifest.task).predictor)
    predictor = predictor_class(model, manifest, device)
    predictor.source = Path(path)
    default = manifest.precision if predictor.device.type == "cpu" else "fp32"
    if (precision or default) == "int8":
        predictor.runtime = load_int8_forward(predictor, Path(path))
    return predictor
