"""The decode pool's threads: one intra-op thread each, and below the forward's priority."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest
import torch

from service.inputs import DECODE_NICENESS, DecodePool

T = TypeVar("T")


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")
def test_decode_threads_yield_to_the_forward() -> None:
    def own() -> tuple[int, int]:
        niceness = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return niceness, torch.get_num_threads()

    before = own()
    pool = DecodePool(threads=2)
    try:
        seen = asyncio.run(_gather(pool, own, 8))
    finally:
        pool.close()
    assert set(seen) == {(min(19, before[0] + DECODE_NICENESS), 1)}
    assert own() == before  # the caller's thread (the event loop's) is left as it was


async def _gather(pool: DecodePool, fn: Callable[[], T], n: int) -> list[T]:
    return list(await asyncio.gather(*(pool.run(fn) for _ in range(n))))
