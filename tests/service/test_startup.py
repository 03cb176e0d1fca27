"""Start-up: uvicorn listens while the models load, so liveness holds and readiness waits."""

from __future__ import annotations

import time

import httpx
import pytest
from helpers import png_bytes

pytestmark = pytest.mark.slow


# Warming and tuning 32 batch sizes takes a second or more: the window these tests look
# into (their first request comes within 20 ms of uvicorn listening).
SLOW_WARM_UP = {"OCELLUS_BACKEND": "eager", "OCELLUS_MAX_BATCH_SIZE": "32"}


def _first_answer(server, path: str, timeout: float = 120) -> httpx.Response:
    """The first answer of `path`, polled every 20 ms from the server's start."""
    end = time.monotonic() + timeout
    while True:
        assert server.alive(), server.log.read_text()[-3000:]
        try:
            return httpx.get(f"{server.url}{path}", timeout=2)
        except httpx.TransportError:
            assert time.monotonic() < end, f"no answer from {path} in {timeout} s"
            time.sleep(0.02)


def test_healthz_answers_while_models_load(start_server, tiny_exports) -> None:
    server = start_server("--model", str(tiny_exports[0]), env=SLOW_WARM_UP, ready=False)
    try:
        started = time.monotonic()
        health = _first_answer(server, "/healthz")
        listening = time.monotonic() - started
        ready = httpx.get(f"{server.url}/readyz", timeout=2)
        early = httpx.post(f"{server.url}/v1/classify", timeout=10,
                           files={"file": ("x.png", png_bytes(), "image/png")})
        assert health.status_code == 200
        assert ready.status_code == 503 and ready.json()["status"] == "loading", ready.text
        assert early.status_code == 503 and early.json()["error"]["code"] == "loading", early.text
        assert int(early.headers["retry-after"]) > 0
        server.wait_ready(120)
        loaded = time.monotonic() - started
        assert httpx.get(f"{server.url}/readyz").json() == {
            "status": "ready", "models": ["tiny"], "refused": []}
        print(f"listening after {listening:.1f} s, ready after {loaded:.1f} s")
    finally:
        server.stop()
    # uvicorn re-raises the SIGTERM after its graceful shutdown, which completed.
    assert "Application shutdown complete" in server.log.read_text()


def test_sigterm_while_loading_shuts_down_cleanly(start_server, tiny_exports) -> None:
    server = start_server("--model", str(tiny_exports[0]), env=SLOW_WARM_UP, ready=False)
    try:
        ready = _first_answer(server, "/readyz")
        assert ready.json()["status"] == "loading", ready.text
        server.proc.terminate()  # the model being loaded is closed; nothing else loads
        server.proc.wait(60)
    finally:
        server.stop()
    log = server.log.read_text()
    assert "Application shutdown complete" in log and "Traceback" not in log, log[-3000:]
