"""Limits enforced while a request streams in, and the work of a request bounded, through
real uvicorn processes: parts, bytes and fields refused as soon as they cross a limit, a
cap on requests in flight, a deadline that covers decoding, a client gone, a full disk.

Bodies are sent slowly over raw sockets, a chunk at a time, so that the number of bytes
sent before the answer came is (within a chunk or two) what the server read.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import select
import socket
import subprocess
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import QUICK_START, make_tiny_export
from PIL import Image

pytestmark = pytest.mark.slow

BOUNDARY = "ocellus-limits-test"
MAX_FILES = 8
MAX_UPLOAD_BYTES = 256 * 1024
CHUNK = 16 * 1024


def _png(side: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), 120, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _heavy_png(side: int = 3000) -> bytes:
    """Few bytes, many pixels to decode: a smooth gradient of side x side pixels."""
    row = np.linspace(0, 255, side, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.stack([np.tile(row, (side, 1))] * 3, -1)).save(buf, "PNG")
    return buf.getvalue()


def _metric(url: str, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0 if absent)."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith((name + "{", name + " ")):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(got.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_for(condition, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _head(port: int, headers: dict[str, str], path: str = "/v1/classify") -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
             f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
             *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


def _part(filename: str) -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{filename}"\r\nContent-Type: image/png\r\n\r\n').encode()


def _read_response(sock: socket.socket, timeout: float = 30) -> tuple[int, dict, bytes]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        got = sock.recv(65536)
        assert got, f"connection closed before a response: {data!r}"
        data += got
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines)}
    while len(body) < int(headers.get("content-length", 0)):
        got = sock.recv(65536)
        if not got:
            break
        body += got
    return int(status_line.split()[1]), headers, body


def _stream_until_answered(port: int, chunks: Iterable[bytes], pause: float = 0.005,
                           path: str = "/v1/classify") -> tuple[int, int, dict]:
    """POST a chunked body slowly; stop sending as soon as the server answers.

    Returns:
        Body bytes sent before the answer, its status, its JSON error.
    """
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(port, {"Transfer-Encoding": "chunked"}, path))
        sent = 0
        for chunk in chunks:
            if select.select([sock], [], [], pause)[0]:
                break  # the answer is in
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:  # the server closed the connection after answering
                break
            sent += len(chunk)
        else:
            sock.sendall(b"0\r\n\r\n")
        status, _, body = _read_response(sock)
    return sent, status, json.loads(body)["error"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_export(tmp_path_factory.mktemp("tiny") / "export")


@pytest.fixture(scope="module")
def server(start_server, tiny):
    """Small limits, two requests in flight at most, one decode thread."""
    return start_server("--model", str(tiny), env={
        **QUICK_START,
        "OCELLUS_MAX_FILES": str(MAX_FILES), "OCELLUS_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "OCELLUS_MAX_IN_FLIGHT": "2", "OCELLUS_DECODE_THREADS": "1"})


@pytest.fixture(scope="module")
def tight_server(start_server, tiny, tmp_path_factory):
    """A 0.5 s request timeout, one decode thread, and (as root) a 1 MB tmpfs as TMPDIR."""
    tmp = tmp_path_factory.mktemp("tmpfs")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tmp)],
                             capture_output=True).returncode == 0
    server = start_server("--model", str(tiny), env={
        **QUICK_START,
        "OCELLUS_REQUEST_TIMEOUT_S": "0.5", "OCELLUS_DECODE_THREADS": "1",
        **({"TMPDIR": str(tmp)} if mounted else {})})
    server.tmpfs = mounted
    yield server
    if mounted:
        subprocess.run(["umount", "-l", str(tmp)], check=False)


def test_more_parts_than_max_files_are_refused_before_the_body_is_read(server) -> None:
    png = _png()
    parts = [_part(f"{i}.png") + png + b"\r\n" for i in range(200)]
    sent, status, error = _stream_until_answered(server.port, [*parts, f"--{BOUNDARY}--\r\n"
                                                               .encode()])
    print(f"too many parts: refused after {sent} of {sum(map(len, parts))} bytes sent")
    assert (status, error["code"]) == (413, "too_many_files"), error
    assert sent <= 20 * len(parts[0]), f"{sent} bytes sent: the whole body was read"


def test_a_file_over_the_byte_limit_is_refused_while_it_streams(server) -> None:
    chunks = [_part("big.png"), *[b"\0" * CHUNK] * 512]  # an 8 MiB file
    sent, status, error = _stream_until_answered(server.port, chunks)
    print(f"file over {MAX_UPLOAD_BYTES} bytes: refused after {sent} of {512 * CHUNK} sent")
    assert (status, error["code"]) == (413, "too_large"), error
    # The whole-body cap (MAX_FILES × MAX_UPLOAD_BYTES ≈ 2 MiB) would come much later.
    assert sent < MAX_UPLOAD_BYTES + 48 * CHUNK, f"{sent} bytes sent before the 413"


def test_an_unknown_model_is_refused_before_the_body_is_read(server) -> None:
    # One 240 kB part (under the file limit) sent 16 kB at a time.
    data = _part("a.png") + b"\x89PNG" + b"\0" * (240 * 1024)
    chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    sent, status, error = _stream_until_answered(server.port, chunks,
                                                 path="/v1/classify?model=nope")
    print(f"unknown model: refused after {sent} of {len(data)} bytes sent")
    assert (status, error["code"]) == (404, "model_not_found"), error
    assert sent <= 3 * CHUNK, f"{sent} bytes sent: the body was read first"


def test_a_thousand_tiny_text_fields_are_refused(server) -> None:
    r = httpx.post(f"{server.url}/v1/classify", files={"file": ("a.png", _png())},
                   data={f"f{i}": "x" for i in range(1000)}, timeout=30)
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "too_many_fields"


def test_past_the_in_flight_cap_503_comes_before_the_body_is_read(server) -> None:
    held = []
    try:
        for _ in range(2):  # two slow uploads hold both places (OCELLUS_MAX_IN_FLIGHT=2)
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(_head(server.port, {"Content-Length": "100000"}) + _part("slow.png"))
            held.append(sock)
        _wait_for(lambda: _metric(server.url, "ocellus_requests_in_flight") == 2,
                  "two requests in flight")
        # A third request: headers only; the answer needs none of its 100 kB body.
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(_head(server.port, {"Content-Length": "100000"}))
            status, headers, body = _read_response(sock, timeout=10)
        assert status == 503 and json.loads(body)["error"]["code"] == "overloaded", body
        assert int(headers["retry-after"]) >= 1
    finally:
        for sock in held:
            sock.close()
    _wait_for(lambda: _metric(server.url, "ocellus_requests_in_flight") == 0,
              "the held requests to end")
    r = httpx.post(f"{server.url}/v1/classify", files={"file": ("a.png", _png())}, timeout=30)
    assert r.status_code == 200, r.text


def test_a_client_gone_is_neither_decoded_nor_forwarded(server) -> None:
    def counts() -> tuple[float, float, float]:
        return (_metric(server.url, "ocellus_inference_duration_seconds_count", stage="decode"),
                _metric(server.url, "ocellus_batch_size_count"),
                _metric(server.url, "ocellus_rejected_requests_total", reason="disconnected"))

    before = counts()
    heavy = _heavy_png(4000)
    with ThreadPoolExecutor(1) as pool:
        # A keeps the one decode thread busy for seconds (4 x 16 MP)...
        a = pool.submit(httpx.post, f"{server.url}/v1/classify", timeout=120,
                        files=[("file", (f"a{i}.png", heavy)) for i in range(4)])
        _wait_for(lambda: _metric(server.url, "ocellus_requests_in_flight") == 1, "A")
        # ... while B, sent whole, waits behind it, and its client goes away.
        png = _png()
        body = _part("b.png") + png + f"\r\n--{BOUNDARY}--\r\n".encode()
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(_head(server.port, {"Content-Length": str(len(body))}) + body)
            time.sleep(0.3)
        _wait_for(lambda: counts()[2] == before[2] + 1, "B counted as disconnected")
        assert a.result().status_code == 200, a.result().text
    decoded, forwards, gone = (x - y for x, y in zip(counts(), before, strict=True))
    assert (decoded, forwards, gone) == (4, 1, 1), "B was decoded or forwarded"


def test_the_deadline_covers_waiting_for_the_decode_pool(tight_server) -> None:
    # 12 x 16 MP on one decode thread: however fast this machine decodes, the last
    # ones wait well past the 0.5 s timeout.
    heavy = _heavy_png(4000)
    decoded_before = _metric(tight_server.url, "ocellus_inference_duration_seconds_count",
                             stage="decode")

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(
                client.post(f"{tight_server.url}/v1/classify",
                            files={"file": (f"{i}.png", heavy)}) for i in range(12)))

    answers = asyncio.run(flood())
    assert {r.status_code for r in answers} <= {200, 503}, [r.text for r in answers]
    late = [r for r in answers if r.status_code == 503]
    assert late, "every request was decoded, however long it waited"
    for r in late:
        assert r.json()["error"]["code"] == "timeout" and int(r.headers["retry-after"]) >= 1
    # Images still queued when their time ran out were never decoded.
    time.sleep(2)  # the one decode already running finishes
    decoded = _metric(tight_server.url, "ocellus_inference_duration_seconds_count",
                      stage="decode") - decoded_before
    assert decoded < len(answers), decoded


def test_a_full_disk_while_spooling_an_upload_is_507(tight_server) -> None:
    if not tight_server.tmpfs:
        pytest.skip("mounting a tmpfs needs root; test_enospc_maps_to_507 checks the mapping")
    # Files over 1 MB are spooled to TMPDIR: a 1 MB tmpfs there is full at once.
    r = httpx.post(f"{tight_server.url}/v1/classify",
                   files={"file": ("big.png", b"\x89PNG" + b"\0" * 3_000_000)}, timeout=30)
    assert r.status_code == 507, r.text
    assert r.json()["error"]["code"] == "insufficient_storage"
    assert tight_server.alive()


@pytest.fixture(scope="module")
def single_server(start_server, tiny):
    """One inference request in flight at most."""
    return start_server("--model", str(tiny), env={**QUICK_START, "OCELLUS_MAX_IN_FLIGHT": "1"})


def test_back_to_back_requests_at_the_cap_are_never_refused(single_server) -> None:
    """A place is free once its answer is sent: a client that sends its next request the
    moment the last answer arrives (keep-alive) never finds it still taken. Freed only
    after the app returned, 12 of 300 such requests were refused."""
    with httpx.Client(timeout=30) as client:
        statuses = [client.post(f"{single_server.url}/v1/classify",
                                files={"file": ("a.png", _png())}).status_code
                    for _ in range(300)]
    assert statuses.count(200) == len(statuses), {s: statuses.count(s) for s in set(statuses)}
    assert _metric(single_server.url, "ocellus_requests_in_flight") == 0
