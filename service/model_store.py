"""The models a running service holds, by name, each with its own inference thread."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from models.errors import ModelNotReadyError, ModelsLoadingError, TaskMismatchError
from models.photos import real_images
from models.predictor import Predictor, load_predictor, rows
from models.tasks import get_task
from service.backends import BackendReport, builders_with_compile_cache, select_backend
from service.batch_tuning import BatchSizeReport, preferred_batch_size
from service.batcher import BatchStats, MicroBatcher, ServingConfig
from service.inputs import DecodePool
from service.metrics import Metrics
from service.redaction import redact_text

log = logging.getLogger(__name__)


def settle_heap() -> None:
    """Collect all garbage, then take every object alive out of the cyclic GC.

    A loaded model is hundreds of thousands of long-lived Python objects (modules,
    parameters, the backend's graph). Left in the oldest generation, every full
    collection walks them all while it holds the GIL: measured at concurrency 32,
    9 pauses of about 130 ms in 8 s, which set the p99 (376 ms, against 177 ms frozen).
    Frozen (`gc.freeze`), they are never walked again. Refcounting frees a retired
    model as it closes: a served model holds no reference cycle (checked by
    tests/service/test_model_store.py). Anything else frozen that later became cyclic
    garbage (a request in flight during a reload) is unfrozen and collected at the next
    load. Called off the event loop after each load, it costs a load one full
    collection of everything loaded, about 0.1 s of GIL per model held.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _batch_recorder(m: Metrics, name: str) -> Callable[[int, float, float, float], None]:
    """The batcher's ``on_batch`` for model `name`.

    A closure over the metrics, not a method of the `ServedModel`: the batcher would hold
    the model that holds the batcher, a cycle that only the cyclic GC frees, and a
    model's objects are frozen out of its reach (`settle_heap`).
    """
    size = m.batch_size.labels(name)
    queue, forward, post = (m.stage_duration.labels(name, stage)
                            for stage in ("queue", "forward", "postprocess"))

    def record(n: int, queue_s: float, forward_s: float, post_s: float) -> None:
        size.observe(n)
        queue.observe(queue_s)
        forward.observe(forward_s)
        post.observe(post_s)

    return record


@dataclass
class ServedModel:
    """A loaded predictor, its inference backend and its micro-batcher.

    Models are not assumed thread-safe, so every forward of one model runs on
    its batcher's single thread, off the event loop; concurrent requests share
    forward passes (service/batcher.py).
    """

    name: str
    path: Path
    predictor: Predictor
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(
        timespec="seconds"))
    serving: ServingConfig = field(default_factory=ServingConfig)
    metrics: Metrics | None = None
    incoming: Callable[[], int] = lambda: 0  # images being decoded (DecodePool.pending)
    backend_report: BackendReport | None = field(init=False, default=None)
    batch_report: BatchSizeReport | None = field(init=False, default=None)
    batcher: MicroBatcher = field(init=False)
    # Requests between `ModelStore.use` and their response; a replaced version is
    # closed when this reaches 0 (on the event loop's thread only, so no lock).
    holders: int = field(init=False, default=0)
    _idle: asyncio.Event | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        m = self.metrics
        stats = BatchStats() if m is None else BatchStats(
            on_batch=_batch_recorder(m, self.name), on_depth=m.queue_depth.labels(self.name).set)
        c = self.serving
        self.batcher = MicroBatcher(
            self.name, self.predictor.forward, self.predictor.postprocess,
            max_batch_size=c.max_batch_size, max_delay_ms=c.max_delay_ms,
            max_queue=c.max_queue, timeout_s=c.timeout_s, incoming=self.incoming, stats=stats,
            threads=c.torch_threads)

    @property
    def backend(self) -> str:
        """The inference backend's name (``eager`` until `warm_up` has chosen)."""
        return self.backend_report.name if self.backend_report is not None else "eager"

    def backend_details(self) -> dict[str, Any] | None:
        """Why this backend: the measured img/s and agreements (for /v1/models)."""
        return self.backend_report.to_dict() if self.backend_report is not None else None

    def batching(self) -> dict[str, Any]:
        """The batch size served and, if tuned, the img/s measured per size (/v1/models)."""
        if self.batch_report is not None:
            return self.batch_report.to_dict()
        return {"preferred": self.batcher.max_batch_size, "max": self.serving.max_batch_size,
                "images_per_second": {}, "reason": "not tuned (OCELLUS_TUNE_BATCH_SIZE=false)"}

    @property
    def manifest(self):
        return self.predictor.manifest

    @property
    def task(self) -> str:
        return self.manifest.task

    async def infer(self, inputs: list[torch.Tensor], metas: list[Any], *,
                    timeout_s: float | None = None, **options: Any) -> list[Any]:
        """Preprocessed inputs of one request → one result per image, batched with others.

        Args:
            timeout_s: What is left of the request's time (`service.inputs.Deadline`).

        Raises:
            ServiceOverloadedError: The queue is full (HTTP 503 with Retry-After).
            InferenceTimeoutError: No result within the request timeout (also 503).
        """
        # In flight is counted from arrival to answer, by InFlightLimitMiddleware.
        return await self.batcher.submit(inputs, metas, timeout_s=timeout_s, **options)

    def warm_up(self) -> None:
        """Choose the backend (measured on real photos), warm every batch size, pick one.

        TorchScript graphs profile their first runs per input shape, so each batch
        size the batcher can form is run twice here rather than on a request. Then,
        unless tuning is off, the batcher's batch size becomes the one this machine
        serves fastest at (service/batch_tuning.py).
        """

        def choose_and_warm() -> None:
            samples = real_images(self.manifest) if self.serving.backend == "auto" else []
            forward, self.backend_report = select_backend(
                self.predictor, self.serving.backend, samples,
                batch_size=self.serving.max_batch_size,
                builders=builders_with_compile_cache(self.serving.compile_cache))
            if self.backend_report.name == "int8":
                # OpenVINO runs the forward on threads of its own (as many as this thread
                # had). torch's work here (stacking a batch, postprocessing) then takes one
                # thread: with two, OpenMP's helper spins after each op on the core the
                # forward needs (docs/serving.md, "Threads").
                torch.set_num_threads(1)
            size = self.predictor.input_size
            for n in range(1, self.serving.max_batch_size + 1):
                for _ in range(2):
                    # Raises if an output is not batch-major: the batcher could not cut
                    # each request's rows out of it, so the model is refused at load.
                    rows(forward(torch.zeros(n, 3, size, size)), 0, n, n)
            self.batcher.forward = forward
            if self.serving.tune_batch_size and self.serving.max_batch_size > 1:
                self.batch_report = preferred_batch_size(forward, size,
                                                         self.serving.max_batch_size)
                self.batcher.max_batch_size = self.batch_report.preferred

        self.batcher.run_sync(choose_and_warm)
        log.info("%s: backend %s (%s); %s", self.name, self.backend, self.backend_report.reason,
                 self.batch_report.reason if self.batch_report else
                 f"batch size {self.batcher.max_batch_size} (not tuned)",
                 extra={"event": "model_warmed", "model": self.name,
                        "version": self.manifest.version, "backend": self.backend,
                        "batch_size": self.batcher.max_batch_size})

    def release(self) -> None:
        """A request that held this model is done (see `ModelStore.use`)."""
        self.holders -= 1
        if self.holders == 0 and self._idle is not None:
            self._idle.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until no request holds this model; False if `timeout` seconds pass first."""
        if self.holders == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Refuse new requests, finish the queued ones, stop the inference thread."""
        self.batcher.close()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Refusal:
    """A model that failed to load, and why: /readyz and /v1/models list it.

    Shown without the admin token, `path` and any path in `reason` are relative
    to `root` (the registry, or the export's parent folder).
    """

    name: str
    reason: str
    version: str | None = None
    path: Path | None = None
    root: Path | None = None
    refused_at: str = field(default_factory=_now)

    def view(self, *, admin: bool) -> dict[str, Any]:
        """The JSON of /readyz and /v1/models; absolute paths for the admin only."""
        path, reason = self.path, self.reason
        if not admin:
            reason = redact_text(reason, self.root)
            path = path.relative_to(self.root) if path and self.root is not None \
                and path.is_relative_to(self.root) else None
        return {"name": self.name, "version": self.version, "reason": reason,
                "path": str(path) if path is not None else None,
                "refused_at": self.refused_at}


class ModelStore:
    """Loaded models by name; `get` picks one for a task and explains refusals.

    While the lifespan's background task loads the models, `loading` is True
    and a request for a model not loaded yet gets `ModelsLoadingError` (503 with
    Retry-After). A model that fails to load is kept in `refused` with the
    reason, until a version of it is served.
    """

    def __init__(self, device: str = "cpu", *, serving: ServingConfig | None = None,
                 metrics: Metrics | None = None, decode_threads: int = 0) -> None:
        self.device = device
        self.serving = serving or ServingConfig()
        self.metrics = metrics
        # One decode pool for all models; the batchers read its backlog.
        self.decode_pool = DecodePool(decode_threads, metrics)
        self.models: dict[str, ServedModel] = {}
        self.refused: dict[str, Refusal] = {}
        self.loading = False

    @property
    def ready(self) -> bool:
        return bool(self.models)

    def refuse(self, name: str, exc: BaseException, *, version: str | None = None,
               path: Path | None = None, root: Path | None = None) -> Refusal:
        """Record that `name` failed to load; serving a version of it clears this."""
        refusal = self.refused[name] = Refusal(name, str(exc) or type(exc).__name__,
                                               version, path, root)
        return refusal

    def load(self, path: Path) -> ServedModel:
        """Load, verify and warm up an export; it replaces a model of the same name."""
        served = self.prepare(path)
        old = self.swap(served)
        if old is not None:
            old.close()
        return served

    def prepare(self, path: Path, name: str | None = None) -> ServedModel:
        """Load, verify and warm up an export without serving it yet (hot reload).

        Blocking: call it off the event loop.
        """
        # fp32: the eager reference; an int8 export's int8 model is a backend.
        predictor = load_predictor(path, device=self.device, precision="fp32")
        served = ServedModel(name or predictor.manifest.name, Path(path), predictor,
                             serving=self.serving, metrics=self.metrics,
                             incoming=lambda: self.decode_pool.pending)
        try:
            served.warm_up()
        except BaseException:
            served.close()
            raise
        settle_heap()
        return served

    def swap(self, served: ServedModel) -> ServedModel | None:
        """Serve `served` under its name, in one dict assignment.

        Requests that already hold the replaced model keep it, so it is returned
        still open: the caller closes it once they are done (`ServedModel.drained`).
        Call it on the event loop's thread, where `get` runs.
        """
        old = self.models.get(served.name)
        self.models[served.name] = served
        self.refused.pop(served.name, None)
        log.info("serving %s (task %s, version %s) from %s", served.name, served.task,
                 served.manifest.version, served.path,
                 extra={"event": "model_loaded", "model": served.name, "task": served.task,
                        "version": served.manifest.version, "backend": served.backend})
        return old

    @contextmanager
    def use(self, name: str | None, task: str | None) -> Iterator[ServedModel]:
        """`get`, held until the request is done: a replaced version drains on this count.

        Use it on the event loop's thread (in the route), around all of the request's
        work with the model: decoding, inference and the response.
        """
        served = self.get(name, task)
        served.holders += 1
        try:
            yield served
        finally:
            served.release()

    def get(self, name: str | None, task: str | None) -> ServedModel:
        """The model called `name`, or the first one of `task` when no name is given.

        A route of one task (``/v1/classify``) names its task; a route that takes any
        model by name (``/v2/models/{name}/infer``) passes ``task=None``.

        Raises:
            ModelNotReadyError: No such model, or none for the task.
            TaskMismatchError: The named model does another task.
        """
        if name is not None:
            if name not in self.models:
                raise self._not_served(f"no model named {name!r}", name)
            served = self.models[name]
            if task is not None and served.task != task:
                raise TaskMismatchError(
                    f"model {name!r} is a {served.task!r} model and cannot {task}; "
                    f"send it to {get_task(served.task).route}")
            return served
        for served in self.models.values():
            if served.task == task:
                return served
        raise self._not_served(f"no {task!r} model is loaded")

    def _not_served(self, message: str, name: str | None = None) -> Exception:
        if self.loading:
            return ModelsLoadingError(f"{message} yet: the models are still loading")
        refusal = self.refused.get(name) if name is not None else None
        if refusal is not None:
            message += f" (refused at load: {refusal.view(admin=False)['reason']})"
        others = {m.name: m.task for m in self.models.values()}
        return ModelNotReadyError(f"{message}; loaded models: {others}")

    def close(self) -> None:
        for served in self.models.values():
            served.close()
        self.models.clear()
        self.decode_pool.close()
