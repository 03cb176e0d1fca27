"""RSS over a soak: readings while a server answers a closed loop, and how far the floor rose.

RSS moves in a saw-tooth of tens of MB as the allocator takes and returns large
buffers (NanoDet over 41k requests: +19, +24, +0.4, +30, +0.4, +25, +0.4 ... MB), so
one reading at the end says little. A soak reads RSS after every ~5 s, and the goal
is judged on the floor, which a leak lifts and a buffer held for a while does not.
"""

from __future__ import annotations

import time

from benchmarks.loadgen import run_load
from benchmarks.servers import HOST, Served, tree_memory_mb


def soak(server: Served, request: bytes, *, concurrency: int, served: int, until: int,
         rps: float, rss_start: float) -> list[tuple[int, float]]:
    """Load `server` until `until` requests in all (`served` so far; 300 s at most), in
    chunks of about 5 s; returns (requests served, MB over `rss_start`) after each, the
    first before any load."""
    def reading() -> tuple[int, float]:
        return served, tree_memory_mb(server.proc.pid, "VmRSS") - rss_start

    samples = [reading()]
    deadline = time.monotonic() + 300
    while served < until and time.monotonic() < deadline:
        served += run_load(HOST, server.port, request, concurrency=concurrency, warmup=0,
                           seconds=min(5.0, 1.0 + (until - served) / max(1.0, rps))).sent
        samples.append(reading())
    return samples


def rss_growth(samples: list[tuple[int, float]]) -> tuple[float | None, str]:
    """(how far RSS's floor rose, in MB per 10k requests, or None with too few readings;
    a line with the end, the highest and every reading, in MB over RSS after the warm-up).

    The floor's rise is the lowest reading of the last third less the lowest of the
    first third (the reading after the warm-up included), scaled by the requests served
    between the two. A leak lifts every reading, the lowest too, in proportion to the
    requests; buffers that the allocator keeps for a while lift only some readings.
    """
    readings = [(0, 0.0), *samples]  # (requests served, MB)
    line = (f"at the end {readings[-1][1]:+.1f}, highest {max(mb for _, mb in readings):+.1f}; "
            "readings " + " ".join(f"{mb:+.0f}" for _, mb in readings))
    third = len(readings) // 3
    if third < 2:
        return None, line
    early = min(readings[:third], key=lambda r: r[1])
    late = min(readings[-third:], key=lambda r: r[1])
    return (late[1] - early[1]) * 10_000 / max(1, late[0] - early[0]), line
