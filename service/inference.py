"""One inference request, as every route that takes image uploads runs it.

The steps are LitServe's. The route decodes its own options; `Inference.run`
decodes the uploads (in the decode pool), predicts (in the model's batcher) and
counts inputs and predictions for the drift metrics; the route encodes the
results as its response model. Routes get an `Inference` as a dependency
(`service.deps.InferenceDep`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from starlette.datastructures import UploadFile

from service import context
from service.inputs import Deadline, DecodePool, PreparedImage, prepare_uploads
from service.metrics import Metrics
from service.model_store import ModelStore, ServedModel
from service.schemas import ModelRef, error_responses
from service.settings import Settings
from service.tracing import model_attributes

# What an inference route may answer besides 200, in the one error shape (service/errors.py).
INFERENCE_ERRORS = error_responses(400, 404, 413, 415, 422, 503)

# Per task, which of one image's predictions the prediction metrics count: the top
# class of a classification, every detection.
COUNTED: dict[str, Callable[[Any], Sequence[Any]]] = {
    "classify": lambda classes: classes[:1], "detect": lambda detections: detections}


@dataclass(frozen=True)
class Inference:
    """What a route needs to answer from uploaded images: models, settings, metrics."""

    store: ModelStore
    settings: Settings
    metrics: Metrics

    @property
    def pool(self) -> DecodePool:
        """The decode pool: for the route's own CPU-bound image work (rendering)."""
        return self.store.decode_pool

    def use(self, name: str | None, task: str | None) -> AbstractContextManager[ServedModel]:
        """The model to answer with, held until the route has answered (`ModelStore.use`)."""
        return self.store.use(name, task)

    async def run(self, served: ServedModel, files: list[UploadFile],
                  **options: Any) -> tuple[list[PreparedImage], list[Any]]:
        """Decode `files`, run `served` on them, and count the inputs and predictions.

        The request's deadline (`Settings.request_timeout_s`) starts here, once the body
        has been read, and covers decoding as well as inference.

        Args:
            served: The model, from `use`.
            **options: The task's postprocess options (``top_k``; ``conf``, ``iou``, ...).

        Returns:
            The prepared images and one result per image, both in upload order.

        Raises:
            ImageError: A part that is not a usable image (400, 413, 415).
            ServiceOverloadedError: A full queue, or no result within the request
                timeout (503 with Retry-After).
        """
        deadline = Deadline.after(self.settings.request_timeout_s)
        ctx = context.current()
        if ctx is not None:  # for the access line (service/middleware.py)
            ctx.model, ctx.version = served.name, str(served.manifest.version)
            ctx.images = len(files)
        request_span = trace.get_current_span()
        if request_span.is_recording():
            request_span.set_attributes({f"ocellus.{k}": v for k, v in {
                **model_attributes(served), "images": len(files)}.items()})
        images = await prepare_uploads(files, served.predictor, self.settings, pool=self.pool,
                                       model=served.name, deadline=deadline)
        for im in images:
            self.metrics.observe_image(served.name, width=im.width, height=im.height,
                                       nbytes=im.nbytes, brightness=im.brightness)
        results = await served.infer([im.input for im in images], [im.meta for im in images],
                                     timeout_s=deadline.remaining(), **options)
        counted = COUNTED[served.task]
        self.metrics.observe_predictions(served.name, [(p.label, p.score) for result in results
                                                       for p in counted(result)])
        return images, results


def model_ref(served: ServedModel) -> ModelRef:
    """The model that answered, as every inference response names it."""
    return ModelRef(name=served.name, version=served.manifest.version, task=served.task)
