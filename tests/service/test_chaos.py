"""Chaos, bounded in time: kills during promotes and reloads, and SIGTERM under load.

- Promoting processes are SIGKILLed mid-loop: ``current`` always names a valid version.
- The server is SIGKILLed during an admin reload, then during an admin rollback (which
  promotes), and restarted each time: the registry is valid and its current version
  serves.
- Then SIGTERM, on the restarted server, while eight clients are mid-request: every
  request answers 200 (drained), and the server shuts down cleanly.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from helpers import QUICK_START, png_bytes

from models.registry import ModelRegistry

pytestmark = pytest.mark.slow

TOKEN = "admin-s3cret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
REPO = Path(__file__).resolve().parents[2]
# Polling off: reloads happen when the test asks. Warming 8 batch sizes makes a reload
# last long enough to be killed inside.
ENV = {"OCELLUS_ADMIN_TOKEN": TOKEN, "OCELLUS_REGISTRY_POLL_SECONDS": "0",
       **QUICK_START, "OCELLUS_MAX_BATCH_SIZE": "8"}
_PROMOTE_FOREVER = """
import itertools, sys
from models.registry import ModelRegistry
registry = ModelRegistry(sys.argv[1])
print("ready", flush=True)
for version in itertools.cycle(["2", "1"]):
    registry.promote("tiny", version)
"""


def _classify(url: str, client: httpx.Client | None = None) -> httpx.Response:
    post = client.post if client is not None else httpx.post
    return post(f"{url}/v1/classify", files={"file": ("x.png", png_bytes(), "image/png")},
                timeout=60)


def _assert_valid_and_served(registry: ModelRegistry, url: str) -> str:
    current = registry.current("tiny")
    assert current in ("1", "2"), current
    registry.verify("tiny", current)  # manifest and weights hash check out
    registry.history("tiny")  # parses
    r = _classify(url)
    assert r.status_code == 200 and r.json()["model"]["version"] == current, r.text
    return current


def _kill_during(server, method: str, path: str, delay_s: float) -> str:
    """Send an admin call, SIGKILL the server `delay_s` later; what the call got."""
    outcome: list[str] = []

    def call() -> None:
        try:
            outcome.append(str(httpx.request(method, f"{server.url}{path}", headers=ADMIN,
                                             timeout=60).status_code))
        except httpx.TransportError as exc:
            outcome.append(type(exc).__name__)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(delay_s)
    server.proc.kill()
    server.proc.wait(30)
    thread.join(30)
    return outcome[0]


def test_kills_leave_a_valid_registry_that_serves_and_sigterm_drains(
        start_server, tiny_exports, tmp_path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    for export in tiny_exports:
        registry.publish("tiny", export)
    registry.promote("tiny", "1")
    server = start_server("--registry", str(registry.root), env=ENV)
    rng = random.Random(0)
    for _ in range(2):  # SIGKILL a process in the middle of promoting, again and again
        proc = subprocess.Popen([sys.executable, "-c", _PROMOTE_FOREVER, str(registry.root)],
                                cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.3))
        proc.kill()
        proc.wait(30)
        proc.stdout.close()
        registry.verify("tiny", registry.current("tiny"))
    assert server.alive()
    # SIGKILL the server while it loads a new version (an admin reload), then restart.
    # One reload first, timed: the kill lands at a third of that on this machine.
    served = _classify(server.url).json()["model"]["version"]
    registry.promote("tiny", other := "2" if served == "1" else "1")
    started = time.monotonic()
    assert httpx.post(f"{server.url}/v1/models/tiny/reload", headers=ADMIN,
                      timeout=60).json()["version"] == other
    reload_s = time.monotonic() - started
    registry.promote("tiny", served)
    got = _kill_during(server, "POST", "/v1/models/tiny/reload", reload_s / 3)
    assert got != "200", "the reload finished before the kill"
    server = start_server("--registry", str(registry.root), env=ENV)
    before = _assert_valid_and_served(registry, server.url)
    # SIGKILL it during an admin rollback: current is rewritten, then the reload starts.
    got = _kill_during(server, "POST", "/v1/models/tiny/rollback", reload_s / 3)
    assert got != "200", "the rollback finished before the kill"
    server = start_server("--registry", str(registry.root), env=ENV)
    after = _assert_valid_and_served(registry, server.url)
    print(f"a reload took {reload_s:.2f} s; killed in one and in a rollback: "
          f"served {before}, then {after}")
    _sigterm_under_load_drains_every_request(server)


def _sigterm_under_load_drains_every_request(server) -> None:
    stop, lock = threading.Event(), threading.Lock()
    outcomes: list[tuple[float, float, int | str]] = []  # (sent, answered, status)

    def client_loop(_: int) -> None:
        with httpx.Client() as client:
            for _ in range(500):  # bounded, whatever happens
                if stop.is_set():
                    return
                sent = time.monotonic()
                try:
                    status: int | str = _classify(server.url, client).status_code
                except httpx.HTTPError as exc:
                    status = repr(exc)
                with lock:
                    outcomes.append((sent, time.monotonic(), status))

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client_loop, i) for i in range(8)]
        end = time.monotonic() + 60
        while len(outcomes) < 40 and time.monotonic() < end:
            time.sleep(0.05)
        stop.set()  # no request starts after the signal; those in flight must all answer
        term = time.monotonic()
        server.proc.terminate()
        for f in futures:
            f.result(90)
    server.proc.wait(60)
    in_flight = [o for o in outcomes if o[0] < term < o[1]]
    failed = [o for o in outcomes if o[2] != 200]
    assert not failed, failed[:5]
    assert len(in_flight) >= 1, "no request was in flight at SIGTERM"
    assert "Application shutdown complete" in server.log.read_text()
    print(f"{len(outcomes)} requests, {len(in_flight)} in flight at SIGTERM, 0 failed")
