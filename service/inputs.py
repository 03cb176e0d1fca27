"""From uploaded parts to model inputs: size checks, decoding and preprocessing."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

import torch
from starlette.datastructures import UploadFile

from models.errors import InferenceTimeoutError
from models.imaging import decode_image
from models.predictor import Predictor
from service.metrics import Metrics
from service.settings import Settings
from service.tracing import span

T = TypeVar("T")

# How much nicer a decode thread is than the service (Linux: per thread). Under load
# the forward's threads want every core; a decode thread that preempts one stalls the
# whole forward at its next barrier. At 10 it yields to them and decodes in their gaps,
# which still keep the batches full (the default classifier at c=32, paired runs:
# 237.9 -> 251.3 req/s at 10, 245.9 at 5, but 211.4 at 19, where decoding starves the
# forward of inputs; NanoDet, whose decode is heavier, 83.5 and 83.0). Raising one's
# niceness needs no privilege.
DECODE_NICENESS = 10


def _start_decode_thread() -> None:
    # One intra-op thread: resizing one image gains nothing from an OpenMP team, and a
    # team's spinning helper would take a core from the forward.
    torch.set_num_threads(1)
    if sys.platform == "linux":  # elsewhere the call would renice the whole process
        tid = threading.get_native_id()
        with contextlib.suppress(OSError):  # a sandbox that refuses it: default priority
            os.setpriority(os.PRIO_PROCESS, tid, min(
                19, os.getpriority(os.PRIO_PROCESS, tid) + DECODE_NICENESS))


class DecodePool:
    """The bounded thread pool that decodes and preprocesses uploads, off the event loop.

    It counts the images it is working on: the batchers read `pending` to decide
    whether waiting for a fuller batch is worth it.

    Args:
        threads: Pool size; 0 = half the cores, at least 1 (see `Settings.decode_threads`).
        metrics: Where decode and preprocess times go.
    """

    def __init__(self, threads: int = 0, metrics: Metrics | None = None) -> None:
        self.threads = threads or max(1, (os.cpu_count() or 2) // 2)
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="decode",
                                            initializer=_start_decode_thread)
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Images submitted and not yet decoded and preprocessed."""
        return self._pending

    def _run(self, upload: BinaryIO, filename: str | None, predictor: Predictor,
             settings: Settings, model: str) -> PreparedImage:
        try:
            return _prepare(upload, filename, predictor, settings, self.metrics, model)
        finally:
            with self._lock:
                self._pending -= 1

    async def prepare(self, upload: BinaryIO, filename: str | None, predictor: Predictor,
                      settings: Settings, model: str) -> PreparedImage:
        with self._lock:
            self._pending += 1
        # In a copy of the request's context: its log lines carry the request's ID.
        job = self._executor.submit(contextvars.copy_context().run, self._run, upload, filename,
                                    predictor, settings, model)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            # Timed out or the client went away: an image still queued is never decoded
            # (then `_run` never counts it down, so it is counted down here).
            if job.cancel():
                with self._lock:
                    self._pending -= 1
            raise

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the pool: other CPU-bound image work (rendering), bounded alike.

        It is not counted in `pending`, which counts images on their way to a batch.
        """
        return await asyncio.wrap_future(
            self._executor.submit(contextvars.copy_context().run, fn, *args))

    def close(self) -> None:
        self._executor.shutdown(wait=True)


@dataclass(frozen=True)
class Deadline:
    """When a request's time is up: `Settings.request_timeout_s` after its upload was read.

    It covers decoding as well as the inference queue and the forward, so a request
    stuck behind others in the decode pool gets the same 503 ``timeout``.
    """

    at: float  # time.monotonic()
    seconds: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds, seconds)

    def remaining(self) -> float:
        """Seconds left; 0 or less once the time is up."""
        return self.at - time.monotonic()


@dataclass
class PreparedImage:
    """One uploaded image, decoded and preprocessed for a model."""

    filename: str | None
    width: int  # of the original, upright image
    height: int
    input: torch.Tensor  # (3, S, S), the model's input
    meta: Any  # what postprocess needs to map results back (e.g. letterbox geometry)
    nbytes: int = 0  # encoded size, for the input-drift metrics
    brightness: float | None = None  # mean RGB value in [0, 1], for the input-drift metrics


def read_part(upload: BinaryIO, settings: Settings) -> bytes:
    """An uploaded part's bytes (blocking: call it in the decode pool).

    Parts are read here, in the pool, rather than in the route: a part's bytes are in
    memory only while it is decoded, so RAM holds about one part per decode thread,
    however many requests wait (their bodies stay in Starlette's spooled files, on
    disk past 1 MB each). One byte over the limit is read, for `decode_image` to refuse.
    """
    upload.seek(0)
    return upload.read(settings.max_upload_bytes + 1)


def _prepare(upload: BinaryIO, filename: str | None, predictor: Predictor,
             settings: Settings, metrics: Metrics | None = None,
             model: str = "") -> PreparedImage:
    with span("decode", model=model or None):  # the request's context: its child span
        return _decode_and_preprocess(upload, filename, predictor, settings, metrics, model)


def _decode_and_preprocess(upload: BinaryIO, filename: str | None, predictor: Predictor,
                           settings: Settings, metrics: Metrics | None,
                           model: str) -> PreparedImage:
    data = read_part(upload, settings)
    started = time.perf_counter()
    decoded = decode_image(data, max_pixels=settings.max_image_pixels,
                           max_bytes=settings.max_upload_bytes,
                           target_size=predictor.preprocessing.decode_size)
    decoded_at = time.perf_counter()
    # The tensor may be a reduced decode of a large JPEG: boxes map back to the original.
    model_input, meta = predictor.preprocess(decoded.tensor,
                                             original_size=(decoded.width, decoded.height))
    if metrics is not None:
        metrics.stage_duration.labels(model, "decode").observe(decoded_at - started)
        metrics.stage_duration.labels(model, "preprocess").observe(
            time.perf_counter() - decoded_at)
    brightness = float(decoded.tensor.mean(dtype=torch.float32)) / 255.0
    return PreparedImage(filename, decoded.width, decoded.height, model_input, meta,
                         nbytes=len(data), brightness=brightness)


async def prepare_uploads(files: list[UploadFile], predictor: Predictor,
                          settings: Settings, *, pool: DecodePool, model: str,
                          deadline: Deadline) -> list[PreparedImage]:
    """Decode and preprocess every part in the service's decode pool.

    Args:
        pool: The service's bounded decode pool (`ModelStore.decode_pool`).
        model: The model's served name, for the stage-time metrics.
        deadline: The request's; images still waiting for the pool then are dropped.

    Raises:
        ImageTooLargeError, ImageDecodeError, UnsupportedImageFormatError: A bad part.
        InferenceTimeoutError: Not decoded by the deadline (503 with Retry-After).
    """
    # The parts' count and sizes were checked as they streamed (service/uploads.py).
    if deadline.remaining() <= 0:
        raise _not_decoded_in_time(deadline)
    try:
        # On timeout the decoding is cancelled: images still queued in the pool are dropped.
        async with asyncio.timeout(deadline.remaining()):
            if len(files) == 1:  # the common case, without a gather's task per part
                return [await pool.prepare(files[0].file, files[0].filename, predictor,
                                           settings, model)]
            return list(await asyncio.gather(*(
                pool.prepare(f.file, f.filename, predictor, settings, model) for f in files)))
    except TimeoutError:
        raise _not_decoded_in_time(deadline) from None


def _not_decoded_in_time(deadline: Deadline) -> InferenceTimeoutError:
    return InferenceTimeoutError(
        f"images not decoded within the request timeout of {deadline.seconds:g} s; the "
        f"service is too busy, retry later", retry_after=1)
