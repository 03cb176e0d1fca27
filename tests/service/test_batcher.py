"""The micro-batcher (service/batcher.py) with a fake model: no server, no real model.

The fake forward sums each image, so a result names the image it came from; a gate
holds the inference thread on its first batch while the test queues the others.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import torch

from models.errors import InferenceTimeoutError, ServiceOverloadedError
from service.batcher import BatchStats, MicroBatcher
from service.errors import RequestError


class FakeModel:
    """``forward``: (B, 3, 2, 2) → (B,) sums; ``postprocess``: one (sum, meta, options) per row.

    Records each batch's size. With `gated`, the first forward signals `entered` and
    then holds the inference thread until `gate` is set.
    """

    def __init__(self, *, gated: bool = False, error: Exception | None = None) -> None:
        self.gated = gated
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.error = error
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        if self.gated and not self.batches:
            self.gate.wait(10)
        self.batches.append(len(x))
        if self.error is not None:
            raise self.error
        return x.flatten(1).sum(1)  # (B,)

    def postprocess(self, out: torch.Tensor, metas: list[Any], **options: Any) -> list[Any]:
        return [(float(v), m, options) for v, m in zip(out, metas, strict=True)]


def image(value: float) -> torch.Tensor:
    """A (3, 2, 2) image whose sum is 12 × `value`."""
    return torch.full((3, 2, 2), float(value))


def batcher_of(model: FakeModel, **kwargs: Any) -> MicroBatcher:
    return MicroBatcher("fake", model.forward, model.postprocess, **kwargs)


async def until(condition: Any) -> None:
    """Yield to the event loop until `condition()` holds (at most 10 s)."""
    end = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < end, "timed out waiting"
        await asyncio.sleep(0.002)


async def queued_behind_gate(batcher: MicroBatcher, model: FakeModel,
                             requests: list[list[float]]) -> list[Any]:
    """Submit `requests[0]`; once its forward holds the thread, queue the others, open the gate.

    Each image's meta is its value, so a result names the image it came from.
    """
    def submit(values: list[float]) -> asyncio.Task:
        return asyncio.create_task(batcher.submit([image(v) for v in values], values))

    jobs = [submit(requests[0])]
    await until(model.entered.is_set)
    jobs += [submit(values) for values in requests[1:]]
    await until(lambda: batcher.queued_images == sum(len(r) for r in requests[1:]))
    model.gate.set()
    return await asyncio.gather(*jobs, return_exceptions=True)


def test_queued_requests_form_batches_up_to_the_max_and_none_is_split() -> None:
    model = FakeModel(gated=True)
    batcher = batcher_of(model, max_batch_size=4, max_delay_ms=0)
    requests = [[0], [1], [2], [3], [4, 5], [6, 7, 8]]
    try:
        results = asyncio.run(queued_behind_gate(batcher, model, requests))
    finally:
        batcher.close()
    # [0] alone (the thread was idle); then 1+2+3 (adding 4+5 would make 5 > 4: that
    # request leads the next batch); then 4+5 (6+7+8 would make 5); then 6+7+8.
    assert model.batches == [1, 3, 2, 3]
    assert results == [[(12.0 * v, v, {}) for v in values] for values in requests]


def test_a_request_larger_than_the_max_batch_runs_alone() -> None:
    model = FakeModel()
    batcher = batcher_of(model, max_batch_size=2)
    try:
        result = asyncio.run(batcher.submit([image(v) for v in range(5)], list(range(5))))
    finally:
        batcher.close()
    assert model.batches == [5] and [r[1] for r in result] == [0, 1, 2, 3, 4]


def test_rows_and_options_go_back_to_the_request_they_came_from() -> None:
    model = FakeModel(gated=True)
    batcher = batcher_of(model, max_batch_size=8, max_delay_ms=0)

    async def main() -> list[Any]:
        first = asyncio.create_task(batcher.submit([image(9)], ["first"], top_k=1))
        await until(model.entered.is_set)
        jobs = [asyncio.create_task(batcher.submit([image(v) for v in values], values, top_k=k))
                for values, k in (([1, 2, 3], 1), ([4], 2), ([5, 6], 1))]
        await until(lambda: batcher.queued_images == 6)
        model.gate.set()
        return [await first, *await asyncio.gather(*jobs)]

    try:
        first, a, b, c = asyncio.run(main())
    finally:
        batcher.close()
    assert model.batches == [1, 6]  # the three requests shared one forward
    assert first == [(108.0, "first", {"top_k": 1})]
    # Different options in one batch: each request is postprocessed on its own rows.
    assert a == [(12.0 * v, v, {"top_k": 1}) for v in (1, 2, 3)]
    assert b == [(48.0, 4, {"top_k": 2})]
    assert c == [(60.0, 5, {"top_k": 1}), (72.0, 6, {"top_k": 1})]


def test_a_lone_request_waits_for_company_only_while_images_are_being_decoded() -> None:
    model = FakeModel()
    decoding = [0]
    batcher = batcher_of(model, max_batch_size=4, max_delay_ms=500, incoming=lambda: decoding[0])

    def timed() -> tuple[Any, float]:
        started = time.perf_counter()
        result = asyncio.run(batcher.submit([image(1)], ["m"]))
        return result, time.perf_counter() - started

    try:
        alone, alone_s = timed()  # nothing on its way: served at once
        decoding[0] = 1  # an image "being decoded" that never arrives
        waited, waited_s = timed()
    finally:
        batcher.close()
    assert alone == waited == [(12.0, "m", {})]
    assert waited_s >= 0.5, waited_s  # it waited the whole max delay, then went alone
    assert alone_s < 0.5, alone_s
    assert model.batches == [1, 1]


def test_an_error_in_forward_reaches_every_request_of_the_batch() -> None:
    model = FakeModel(gated=True, error=RuntimeError("forward failed"))
    batcher = batcher_of(model, max_batch_size=4, max_delay_ms=0)
    try:
        results = asyncio.run(queued_behind_gate(batcher, model, [[0], [1], [2, 3]]))
    finally:
        batcher.close()
    assert model.batches == [1, 3]
    assert all(isinstance(r, RuntimeError) and str(r) == "forward failed" for r in results)


def test_the_batcher_keeps_serving_after_a_failed_batch() -> None:
    model = FakeModel(error=RuntimeError("once"))
    batcher = batcher_of(model)

    async def main() -> tuple[Any, Any]:
        with pytest.raises(RuntimeError, match="once"):
            await batcher.submit([image(1)], ["m"])
        model.error = None
        return await batcher.submit([image(2)], ["m"])

    try:
        assert asyncio.run(main()) == [(24.0, "m", {})]
    finally:
        batcher.close()


def test_a_queued_request_behind_another_can_be_cancelled() -> None:
    model = FakeModel(gated=True)
    batcher = batcher_of(model, max_batch_size=1, max_delay_ms=0)

    async def main() -> list:
        jobs = [asyncio.create_task(batcher.submit([image(i)], [None])) for i in range(3)]
        await until(lambda: model.entered.is_set() and batcher.queued_images == 2)
        jobs[2].cancel()  # the second job in the queue: found by identity, not by value
        await until(lambda: batcher.queued_images == 1)
        model.gate.set()
        return await asyncio.gather(*jobs, return_exceptions=True)

    try:
        first, second, third = asyncio.run(main())
    finally:
        batcher.close()
    assert first == [(0.0, None, {})] and second == [(12.0, None, {})]
    assert isinstance(third, asyncio.CancelledError)
    assert model.batches == [1, 1] and batcher.queued_images == 0


def test_a_request_cancelled_during_its_forward_leaves_the_others_their_rows() -> None:
    model = FakeModel(gated=True)
    # While an image is "being decoded" the batch waits to be full: all three share it.
    decoding = [1]
    batcher = batcher_of(model, max_batch_size=3, max_delay_ms=10_000,
                         incoming=lambda: decoding[0])

    async def main() -> list:
        jobs = [asyncio.create_task(batcher.submit([image(i)], [i])) for i in range(3)]
        await until(model.entered.is_set)  # the batch of three is in its forward
        decoding[0] = 0
        jobs[1].cancel()
        await asyncio.sleep(0.02)
        model.gate.set()
        done = await asyncio.gather(*jobs, return_exceptions=True)
        return [*done, await batcher.submit([image(7)], [7])]  # the thread still serves

    try:
        first, second, third, later = asyncio.run(main())
    finally:
        batcher.close()
    assert model.batches == [3, 1]
    assert first == [(0.0, 0, {})] and third == [(24.0, 2, {})]
    assert isinstance(second, asyncio.CancelledError)
    assert later == [(84.0, 7, {})]


def test_a_full_queue_is_refused_at_once_with_retry_after() -> None:
    model = FakeModel(gated=True)
    batcher = batcher_of(model, max_batch_size=1, max_queue=2, max_delay_ms=0)

    async def main() -> None:
        running = asyncio.create_task(batcher.submit([image(0)], [0]))
        await until(model.entered.is_set)  # taken: the queue is empty again
        queued = asyncio.create_task(batcher.submit([image(1), image(2)], [1, 2]))
        await until(lambda: batcher.queued_images == 2)
        with pytest.raises(ServiceOverloadedError, match="overloaded") as refused:
            await batcher.submit([image(3)], [3])
        assert refused.value.retry_after >= 1
        with pytest.raises(RequestError, match="can never fit") as too_big:
            await batcher.submit([image(v) for v in range(3)], [0, 1, 2])
        assert (too_big.value.status, too_big.value.code) == (413, "too_many_files")
        model.gate.set()
        await asyncio.gather(running, queued)

    try:
        asyncio.run(main())
    finally:
        batcher.close()


def test_no_result_within_the_timeout_is_a_timeout_error_and_the_job_is_dropped() -> None:
    model = FakeModel(gated=True)
    batcher = batcher_of(model, max_batch_size=1, max_delay_ms=0, timeout_s=0.2)

    async def main() -> None:
        running = asyncio.create_task(batcher.submit([image(0)], [0]))
        await until(model.entered.is_set)
        with pytest.raises(InferenceTimeoutError, match="within the request timeout of 0.2 s"):
            await batcher.submit([image(1)], [1])  # queued behind the gate, then late
        assert batcher.queued_images == 0  # dropped before it cost a forward
        with pytest.raises(InferenceTimeoutError):  # no time left: refused before queueing
            await batcher.submit([image(2)], [2], timeout_s=0)
        with pytest.raises(InferenceTimeoutError):  # its own 0.2 s ran out at the gate
            await running
        model.gate.set()
        # Answered after the abandoned one: the loop stays open until the thread is done.
        assert await batcher.submit([image(3)], [3]) == [(36.0, 3, {})]

    try:
        asyncio.run(main())
    finally:
        batcher.close()
    assert model.batches == [1, 1]


def test_after_close_new_requests_are_refused_and_stats_were_reported() -> None:
    model, batches, depths = FakeModel(), [], []
    batcher = batcher_of(model, stats=BatchStats(
        on_batch=lambda n, q, f, p: batches.append(n), on_depth=depths.append))
    assert asyncio.run(batcher.submit([image(1), image(2)], [1, 2]))[1][0] == 24.0
    batcher.close()
    with pytest.raises(ServiceOverloadedError, match="shutting down"):
        asyncio.run(batcher.submit([image(1)], [1]))
    assert batches == [2] and depths == [2, 0]


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"max_queue": 0},
                                    {"max_delay_ms": -1}, {"timeout_s": 0}])
def test_bad_limits_are_refused_when_built(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="need max_batch_size >= 1, max_queue >= 1"):
        batcher_of(FakeModel(), **kwargs)
