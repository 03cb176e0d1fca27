"""A dynamic micro-batcher: one per model, with the model's single inference thread.

Requests (each a list of preprocessed images) queue up; the inference thread
takes the oldest, then keeps adding requests while the batch has room
(`max_batch_size` images) and more are on their way, for at most `max_delay_ms`
after the first one arrived. One forward runs on the whole batch; its outputs
are cut back into each request's rows, in order, and each caller's future gets
its own results. A request is never split: one with more images than
`max_batch_size` runs as a batch of its own.

"More on their way" is the number of images being decoded right now (a callable
the service passes in). When nothing is being decoded the batch starts at once,
so a lone request never waits for company that isn't coming (concurrency 1 pays
no delay); under load, batches fill up while the previous forward runs.

Back-pressure: the queue holds at most `max_queue` images; past that `submit`
raises `ServiceOverloadedError` at once (HTTP 503 with Retry-After). A request
that waits longer than `timeout_s` in all gets `InferenceTimeoutError` (also 503
with Retry-After: the service is too busy, retrying later is the fix) and, if
still queued, is dropped before it costs a forward pass. `close` stops new work
and finishes everything already queued.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from opentelemetry import context as otel_context
from opentelemetry import trace

from models.errors import InferenceTimeoutError, ServiceOverloadedError
from models.predictor import rows
from service import context
from service.errors import RequestError
from service.tracing import tracer

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], Any]
Postprocess = Callable[..., list[Any]]


@dataclass(frozen=True)
class ServingConfig:
    """How a model is served: backend and batching (from `Settings`)."""

    backend: str = "eager"
    max_batch_size: int = 8
    max_delay_ms: float = 5.0
    max_queue: int = 256
    timeout_s: float = 30.0
    tune_batch_size: bool = False
    torch_threads: int = 0  # of each inference thread; 0 = torch's default
    compile_cache: Path | None = None  # compiled graphs kept between loads; None: not kept

    @classmethod
    def from_settings(cls, settings: Any) -> ServingConfig:
        return cls(backend=settings.backend, max_batch_size=settings.max_batch_size,
                   max_delay_ms=settings.max_delay_ms, max_queue=settings.max_queue,
                   timeout_s=settings.request_timeout_s,
                   tune_batch_size=settings.tune_batch_size,
                   # torch's default honours OMP_NUM_THREADS and counts physical cores.
                   torch_threads=settings.torch_threads or torch.get_num_threads(),
                   compile_cache=settings.cache_dir / "compiled")


# eq=False: jobs are found by identity (`_drop`); a generated __eq__ would compare
# their tensors, and removing any job but the first would raise.
@dataclass(eq=False)
class _Job:
    inputs: list[torch.Tensor]  # each (3, S, S)
    metas: list[Any]
    options: dict[str, Any]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)
    request_id: str | None = field(default_factory=context.current_id)  # the submitter's
    trace_context: Any = field(default_factory=otel_context.get_current)  # the submitter's
    enqueued_ns: int = field(default_factory=time.time_ns)  # wall clock, for its spans

    @property
    def size(self) -> int:
        return len(self.inputs)


def _trace_batch(model: str, batch: list[_Job], images: int, started_ns: int,
                 forwarded_ns: int, done_ns: int) -> None:
    """The batch's span, linked to each request it served, and each request's queue,
    forward and postprocess spans (children of its own span, the forward linked back
    to the batch), with the times measured here. Nothing when no request is traced."""
    traced = [job for job in batch
              if trace.get_current_span(job.trace_context).is_recording()]
    if not traced:
        return
    links = [trace.Link(trace.get_current_span(job.trace_context).get_span_context())
             for job in traced]
    attributes = {"ocellus.model": model, "ocellus.batch.size": images,
                  "ocellus.batch.requests": len(batch)}
    # A child of the first traced request: sampled whenever that request is (a root
    # of its own would be sampled apart, and the others' links could point at nothing).
    shared = tracer.start_span("batch", context=traced[0].trace_context, links=links,
                               start_time=started_ns, attributes=attributes)
    shared.end(end_time=done_ns)
    back = [trace.Link(shared.get_span_context())]
    for job in traced:
        own = {**attributes, "ocellus.images": job.size}
        for name, start, end, linked in (("queue", job.enqueued_ns, started_ns, ()),
                                         ("forward", started_ns, forwarded_ns, back),
                                         ("postprocess", forwarded_ns, done_ns, ())):
            tracer.start_span(name, context=job.trace_context, links=linked,
                              start_time=start, attributes=own).end(end_time=end)


def _resolve(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # timed out or cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


@dataclass
class BatchStats:
    """What the batcher reports to metrics (called on the inference thread)."""

    on_batch: Callable[[int, float, float, float], None] = lambda n, q, f, p: None
    on_depth: Callable[[int], None] = lambda depth: None


class MicroBatcher:
    """Gathers concurrent requests into batches for one model.

    Args:
        name: The model's name (thread name, log lines).
        forward: ``(B, 3, S, S) → raw outputs``; only ever called on this batcher's thread.
        postprocess: ``(outputs, metas, **options) → one result per image``.
        max_batch_size: Images per forward pass.
        max_delay_ms: The longest a batch waits for more requests.
        max_queue: Images allowed to wait; more are refused.
        timeout_s: The longest a request may wait for its results.
        incoming: Images being decoded now (they may join the next batch).
        stats: Metric callbacks.
        threads: Intra-op threads of this batcher's thread (0: torch's default).
    """

    def __init__(self, name: str, forward: Forward, postprocess: Postprocess, *,
                 max_batch_size: int = 8, max_delay_ms: float = 5.0, max_queue: int = 256,
                 timeout_s: float = 30.0, incoming: Callable[[], int] = lambda: 0,
                 stats: BatchStats | None = None, threads: int = 0) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_delay_ms < 0 or timeout_s <= 0:
            raise ValueError(
                f"need max_batch_size >= 1, max_queue >= 1, max_delay_ms >= 0 and "
                f"timeout_s > 0; got {max_batch_size}, {max_queue}, {max_delay_ms}, {timeout_s}")
        self.name = name
        self.forward = forward
        self.postprocess = postprocess
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.incoming = incoming
        self.stats = stats or BatchStats()
        self._queue: deque[_Job] = deque()
        self._queued_images = 0
        self._cond = threading.Condition()
        self._closing = False
        self._seconds_per_image = 0.01  # running estimate, for Retry-After
        self.threads = threads
        self._thread = threading.Thread(target=self._loop, name=f"infer-{name}", daemon=True)
        self._thread.start()

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def run_sync(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the inference thread between batches (warm-up, swaps); wait for it."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def job() -> None:
            try:
                box["result"] = fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                box["error"] = exc
            done.set()

        with self._cond:
            self._queue.appendleft(job)  # type: ignore[arg-type]
            self._cond.notify()
        done.wait()
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained, at least 1."""
        return max(1, math.ceil(self._queued_images * self._seconds_per_image))

    async def submit(self, inputs: list[torch.Tensor], metas: list[Any], *,
                     timeout_s: float | None = None, **options: Any) -> list[Any]:
        """Queue one request's images; wait for its results (one per image, in order).

        Args:
            timeout_s: What is left of the request's time (it began before decoding);
                default and at most the batcher's `timeout_s`.

        Raises:
            RequestError: More images than the whole queue holds (413).
            ServiceOverloadedError: The queue is full, or the service is shutting down.
            InferenceTimeoutError: No result in time (none left: refused before queueing).
        """
        timeout = self.timeout_s if timeout_s is None else min(timeout_s, self.timeout_s)
        late = (f"no result from model {self.name!r} within the request timeout of "
                f"{self.timeout_s:g} s; the service is too busy, retry later")
        if timeout <= 0:
            raise InferenceTimeoutError(late, retry_after=self.retry_after())
        loop = asyncio.get_running_loop()
        job = _Job(list(inputs), list(metas), options, loop.create_future(), loop)
        with self._cond:
            if self._closing:
                raise ServiceOverloadedError("the service is shutting down", retry_after=1)
            if job.size > self.max_queue:
                raise RequestError(
                    f"{job.size} images in one request can never fit the inference queue of "
                    f"{self.max_queue} images; send at most {self.max_queue} per request",
                    status=413, code="too_many_files")
            if self._queued_images + job.size > self.max_queue:
                raise ServiceOverloadedError(
                    f"model {self.name!r} is overloaded: {self._queued_images} images are "
                    f"queued and the limit is {self.max_queue}; retry later",
                    retry_after=self.retry_after())
            self._queue.append(job)
            self._queued_images += job.size
            self.stats.on_depth(self._queued_images)
            self._cond.notify()
        try:
            # No wait_for, no shield: each is a task or future more per request, on the
            # event loop. Cancelling the job's own future on a timeout or a disconnect
            # is harmless: `_drop` forgets the job, and `_resolve` skips a done future.
            async with asyncio.timeout(timeout):
                return await job.future
        except TimeoutError:
            self._drop(job)
            raise InferenceTimeoutError(late, retry_after=self.retry_after()) from None
        except asyncio.CancelledError:  # the client went away
            self._drop(job)
            raise

    def _drop(self, job: _Job) -> None:
        """Forget a job that is still queued (a forward already running finishes anyway)."""
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return
            self._queued_images -= job.size
            self.stats.on_depth(self._queued_images)
        if not job.future.done():
            job.future.cancel()

    def _take_batch(self) -> list[_Job] | Callable[[], None] | None:
        """Block until there is work; return a batch, a control job, or None to stop."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            if not isinstance(self._queue[0], _Job):
                return self._queue.popleft()  # a run_sync job
            batch = [self._queue.popleft()]
            images = batch[0].size
            deadline = batch[0].enqueued + self.max_delay
            while images < self.max_batch_size:
                if self._queue and isinstance(self._queue[0], _Job):
                    if images + self._queue[0].size > self.max_batch_size:
                        break  # never split a request; it leads the next batch
                    job = self._queue.popleft()
                    batch.append(job)
                    images += job.size
                    continue
                remaining = deadline - time.perf_counter()
                if self._closing or remaining <= 0 or self.incoming() <= 0:
                    break
                self._cond.wait(min(remaining, 0.001))
            self._queued_images -= images
            self.stats.on_depth(self._queued_images)
            return batch

    def _loop(self) -> None:
        if self.threads:
            # OpenMP's team size is per calling thread: this one's forwards get all of them.
            torch.set_num_threads(self.threads)
        while True:
            work = self._take_batch()
            if work is None:
                return
            if not isinstance(work, list):
                work()
                continue
            try:
                self._run(work)
            except BaseException as exc:  # noqa: BLE001 - each caller gets the error
                log.exception("batch of model %s failed", self.name)
                for job in work:
                    job.loop.call_soon_threadsafe(_resolve, job.future, None, exc)

    def _run(self, batch: list[_Job]) -> None:
        started_ns = time.time_ns()
        started = time.perf_counter()
        inputs = torch.stack([x for job in batch for x in job.inputs])  # (B, 3, S, S)
        outputs = self.forward(inputs)
        forwarded = time.perf_counter()
        n = len(inputs)
        self._seconds_per_image = 0.8 * self._seconds_per_image + 0.2 * (forwarded - started) / n
        first = [job for job in batch if job.options == batch[0].options]
        if len(first) == len(batch):
            # The common case: one postprocess for the whole batch, then cut by request.
            results = self.postprocess(outputs, [m for job in batch for m in job.metas],
                                       **batch[0].options)
            per_job, start = [], 0
            for job in batch:
                per_job.append(results[start:start + job.size])
                start += job.size
        else:
            per_job, start = [], 0
            for job in batch:
                per_job.append(self.postprocess(rows(outputs, start, start + job.size, n),
                                                job.metas, **job.options))
                start += job.size
        done = time.perf_counter()
        for job, result in zip(batch, per_job, strict=True):
            job.loop.call_soon_threadsafe(_resolve, job.future, result, None)
        # Accounted for once the answers are on their way, not in their path.
        queue_wait = started - min(job.enqueued for job in batch)
        self.stats.on_batch(n, queue_wait, forwarded - started, done - forwarded)
        _trace_batch(self.name, batch, n, started_ns,
                     started_ns + round((forwarded - started) * 1e9),
                     started_ns + round((done - started) * 1e9))
        if log.isEnabledFor(logging.INFO):
            log.info("batch of %d images for %s", n, self.name, extra={
                "event": "batch", "model": self.name, "images": n,
                "request_ids": [job.request_id for job in batch],
                "queue_ms": round(queue_wait * 1000, 2),
                "forward_ms": round((forwarded - started) * 1000, 2),
                "postprocess_ms": round((done - forwarded) * 1000, 2)})

    def close(self, timeout: float | None = 60) -> None:
        """Refuse new requests, finish the queued ones, stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
