"""Hot reload from the registry under load, refusal of bad versions, and the admin API."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from helpers import QUICK_START, png_bytes

from models.export import MANIFEST_FILE, WEIGHTS_FILE
from models.registry import ModelRegistry

pytestmark = pytest.mark.slow

TOKEN = "admin-s3cret"
KEY = "client-key"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


class ClientLoop:
    """Threads that classify until stopped (or a deadline), recording every outcome."""

    def __init__(self, url: str, threads: int = 3, deadline_s: float = 120) -> None:
        self.url, self.outcomes, self.stop = url, [], threading.Event()
        self.deadline = time.monotonic() + deadline_s
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(threads)]
        self.lock = threading.Lock()
        for t in self.threads:
            t.start()

    def _run(self, thread: int) -> None:
        image = png_bytes()
        with httpx.Client(timeout=30, headers={"X-API-Key": KEY}) as client:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                try:
                    r = client.post(f"{self.url}/v1/classify",
                                    files={"file": ("x.png", image, "image/png")})
                    outcome = (r.status_code, r.json()["model"]["version"]
                               if r.status_code == 200 else r.text)
                except httpx.HTTPError as exc:
                    outcome = (0, repr(exc))
                with self.lock:
                    self.outcomes.append((thread, *outcome))

    def wait_for(self, version: str, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if any(v == version for *_, v in self.outcomes[-5:]):
                    return
            time.sleep(0.1)
        raise AssertionError(f"no response from version {version} in {timeout}s: "
                             f"{self.outcomes[-5:]}")

    def count(self) -> int:
        with self.lock:
            return len(self.outcomes)

    def finish(self) -> list[tuple[int, int, str]]:
        self.stop.set()
        for t in self.threads:
            t.join(60)
        return self.outcomes


def _corrupt_weights(folder: Path) -> None:
    data = bytearray((folder / WEIGHTS_FILE).read_bytes())
    data[-100] ^= 0xFF
    (folder / WEIGHTS_FILE).write_bytes(bytes(data))


def _as_detector(folder: Path) -> None:
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["task"] = "detect"
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def served(start_server, tiny_exports, tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    registry = ModelRegistry(root)
    registry.promote("tiny", registry.publish("tiny", tiny_exports[0]))
    server = start_server("--registry", str(root), env={
        "OCELLUS_ADMIN_TOKEN": TOKEN, "OCELLUS_API_KEYS": KEY,
        "OCELLUS_REGISTRY_POLL_SECONDS": "0.3", "OCELLUS_RELOAD_DRAIN_SECONDS": "60"})
    return server, registry


def _drained_line(server, version: str, timeout: float = 20) -> str:
    """The log line saying `version` of tiny was closed after its last request."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        lines = [line for line in server.log.read_text().splitlines()
                 if f"tiny version {version} drained" in line]
        if lines:
            return lines[0]
        time.sleep(0.2)
    raise AssertionError(f"version {version} not closed in {timeout}s:\n"
                         f"{server.log.read_text()[-2000:]}")


def _metric(url: str, line_prefix: str) -> float:
    text = httpx.get(f"{url}/metrics", headers={"X-API-Key": KEY}).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(line_prefix)]
    return sum(values)


def test_promotion_under_load_switches_without_a_failure(served, tiny_exports) -> None:
    server, registry = served
    loop = ClientLoop(server.url)
    try:
        loop.wait_for("1")
        registry.promote("tiny", registry.publish("tiny", tiny_exports[1]))  # polling finds it
        loop.wait_for("2")
        # Closed when its last request answered, not after the 60 s drain bound.
        drained = _drained_line(server, "1")
        assert float(drained.rsplit(" in ", 1)[1].split(" s")[0]) < 10, drained
        # Bad versions: a corrupt weights file, then a change of task. Both refused.
        v3 = registry.publish("tiny", tiny_exports[0])
        _corrupt_weights(registry.path("tiny", v3))
        registry.promote("tiny", v3, verify=False)
        r = httpx.post(f"{server.url}/v1/models/tiny/reload", headers=ADMIN, timeout=60)
        assert r.status_code == 409 and r.json()["error"]["code"] == "version_refused", r.text
        assert "sha256" in r.json()["error"]["message"]
        v4 = registry.publish("tiny", tiny_exports[0])
        _as_detector(registry.path("tiny", v4))
        registry.promote("tiny", v4, verify=False)
        r = httpx.post(f"{server.url}/v1/models/tiny/reload", headers=ADMIN, timeout=60)
        assert r.status_code == 409 and "task" in r.json()["error"]["message"], r.text
        seen = loop.count()
        end = time.monotonic() + 30
        while loop.count() < seen + 20 and time.monotonic() < end:
            time.sleep(0.1)
    finally:
        outcomes = loop.finish()
    failures = [o for o in outcomes if o[1] != 200]
    assert not failures, failures[:5]
    versions = [v for *_, v in outcomes]
    assert set(versions) == {"1", "2"}
    assert versions.count("1") >= 5 and versions.count("2") >= 20, len(versions)
    # Each client, once switched, never goes back (a request in flight at the
    # switch may still answer from version 1 after another client saw 2).
    for thread in range(3):
        mine = [v for t, _, v in outcomes if t == thread]
        assert "1" not in mine[mine.index("2"):], mine
    assert versions[-20:] == ["2"] * 20  # the refused versions never served
    assert server.alive()
    assert _metric(server.url, 'ocellus_model_reloads_total{model="tiny",result="failure"}') >= 2
    assert _metric(server.url, 'ocellus_model_reloads_total{model="tiny",result="success"}') >= 1
    info = [line for line in httpx.get(f"{server.url}/metrics").text.splitlines()
            if line.startswith("ocellus_model_info{")]
    assert len(info) == 1 and 'model="tiny",task="classify",version="2"} 1.0' in info[0], info


def test_rollback_through_the_admin_api(served) -> None:
    server, registry = served
    registry.promote("tiny", "2")  # undo the refused versions
    r = httpx.post(f"{server.url}/v1/models/tiny/rollback", headers=ADMIN, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == registry.current("tiny") != "2"
    models = httpx.get(f"{server.url}/v1/models", headers=ADMIN).json()["models"]
    assert models[0]["path"] == str(registry.path("tiny", r.json()["version"]))


def test_admin_routes_need_the_token(served, start_server, tiny_exports) -> None:
    server, _ = served
    url = f"{server.url}/v1/models/tiny/reload"
    missing = httpx.post(url)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(url, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden"
    assert httpx.post(url, headers=ADMIN, timeout=60).status_code == 200
    # Without an admin token the admin API is off, token or not.
    plain = start_server("--model", str(tiny_exports[0]), env=QUICK_START)
    off = httpx.post(f"{plain.url}/v1/models/model/reload", headers=ADMIN)
    assert off.status_code == 403 and "OCELLUS_ADMIN_TOKEN" in off.json()["error"]["message"]


def test_api_keys_guard_inference_routes(served) -> None:
    server, _ = served
    image = {"file": ("x.png", png_bytes(), "image/png")}
    before = _metric(server.url, 'ocellus_rejected_requests_total{reason="unauthorized"}')
    r = httpx.post(f"{server.url}/v1/classify", files=image)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = httpx.post(f"{server.url}/v1/classify", files=image,
                   headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["message"] == "invalid API key"
    r = httpx.post(f"{server.url}/v1/classify", files=image,
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 200
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # probes stay open
    after = _metric(server.url, 'ocellus_rejected_requests_total{reason="unauthorized"}')
    assert after - before == 2


def test_inputs_and_refusals_are_counted(served) -> None:
    server, _ = served
    url, auth = server.url, {"X-API-Key": KEY}
    labels = 'model="tiny"'
    before = {m: _metric(url, m) for m in (
        'ocellus_image_decode_failures_total{reason="bad_image"}',
        'ocellus_rejected_requests_total{reason="bad_image"}',
        f"ocellus_image_width_pixels_count{{{labels}}}",
        f"ocellus_prediction_confidence_count{{{labels}}}")}
    r = httpx.post(f"{url}/v1/classify", headers=auth,
                   files={"file": ("x.png", b"not an image", "image/png")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_image"
    r = httpx.post(f"{url}/v1/classify", headers=auth, timeout=60,
                   files={"file": ("x.png", png_bytes(size=40), "image/png")})
    assert r.status_code == 200
    after = {m: _metric(url, m) for m in before}
    assert [after[m] - before[m] for m in before] == [1, 1, 1, 1]
    text = httpx.get(f"{url}/metrics").text
    assert f'ocellus_image_width_pixels_bucket{{le="64.0",{labels}}}' in text
    assert f"ocellus_image_mean_brightness_ratio_sum{{{labels}}}" in text
