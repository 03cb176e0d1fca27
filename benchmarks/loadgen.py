"""A cheap closed-loop HTTP/1.1 load generator: asyncio streams, keep-alive, no parsing library.

It shares the 2 cores with the server under test, so it does as little as it can:
one prebuilt request (bytes), one persistent connection per concurrent client,
and only the status line, Content-Length or chunk sizes parsed. Its own CPU time
per request is measured and reported, so its cost is visible.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass


def multipart_request(path: str, host: str, field: str, filename: str, data: bytes,
                      content_type: str = "image/jpeg") -> bytes:
    """A complete POST with one multipart/form-data file part."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n").encode() \
        + data + f"\r\n--{boundary}--\r\n".encode()
    return raw_request(path, host, body, f"multipart/form-data; boundary={boundary}")


def raw_request(path: str, host: str, body: bytes, content_type: str) -> bytes:
    """A complete POST of `body` as-is."""
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one response; return its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked = None, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    client_cpu_s: float
    sent: int = 0  # warm-up included, for the CPU per request

    @property
    def rps(self) -> float:
        return (self.requests - self.errors) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def client_cpu_ms_per_request(self) -> float:
        return 1000 * self.client_cpu_s / max(1, self.sent)


RESPONSE_TIMEOUT_S = 60.0


async def _client(host: str, port: int, request: bytes, stop_at: float, measure_from: float,
                  out: LoadResult) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while (now := time.perf_counter()) < stop_at:
            try:
                writer.write(request)
                await writer.drain()
                # Bounded: a server that stops answering costs an error, not a hang.
                status = await asyncio.wait_for(_read_response(reader), RESPONSE_TIMEOUT_S)
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                status = 0
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
            done = time.perf_counter()
            out.sent += 1
            if now >= measure_from:
                out.requests += 1
                if status != 200:
                    out.errors += 1
                else:
                    out.latencies.append(done - now)
    finally:
        writer.close()


async def _run(host: str, port: int, request: bytes, concurrency: int, seconds: float,
               warmup: float) -> LoadResult:
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds
    out = LoadResult(concurrency, 0, 0, seconds, [], 0.0)
    cpu = time.process_time()
    await asyncio.gather(*(_client(host, port, request, stop_at, measure_from, out)
                           for _ in range(concurrency)))
    out.client_cpu_s = time.process_time() - cpu
    # Requests still in flight at stop_at finish late; count the real window.
    out.seconds = max(seconds, time.perf_counter() - measure_from)
    return out


def run_load(host: str, port: int, request: bytes, *, concurrency: int, seconds: float = 8.0,
             warmup: float = 1.5) -> LoadResult:
    """Closed loop: `concurrency` clients, each sending `request` back to back."""
    return asyncio.run(_run(host, port, request, concurrency, seconds, warmup))
