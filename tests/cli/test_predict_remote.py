"""``ocellus predict --url`` as a subprocess, against a real server on 127.0.0.1: its lines
are what a direct POST answers, a bad image is one error line, ``--out`` resumes, and
503 with Retry-After is waited out until every image has its result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import QUICK_START, png_bytes
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
DARKNET_PHOTOS = Path("/usr/share/darknet/data")
KEY = "test-key"
MAX_UPLOAD_BYTES = 2_000_000  # per file: the darknet photos are under it


@pytest.fixture(scope="module")
def server(start_server, tiny_exports: list[Path], tiny_detector_export: Path):
    """"tiny" (classify) and "tinydet" (detect), behind an API key. Batches of one image,
    so that concurrent requests get the very same floats as one-at-a-time ones."""
    return start_server("--model", str(tiny_exports[0]), "--model", str(tiny_detector_export),
                        env={**QUICK_START, "OCELLUS_API_KEYS": KEY,
                             "OCELLUS_MAX_BATCH_SIZE": "1",
                             "OCELLUS_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES)})


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Debian's darknet photos and two PNGs (one with a space and an accent in its name),
    in nested folders, next to a file that is not an image."""
    photos = sorted(DARKNET_PHOTOS.glob("*.jpg"))
    if not photos:
        pytest.fail("Debian's darknet photos are missing: run `make system-deps`")
    root = tmp_path_factory.mktemp("photos")
    (root / "more" / "png").mkdir(parents=True)
    for photo in photos:
        shutil.copy(photo, root / photo.name)
    (root / "more" / "red.png").write_bytes(png_bytes((200, 30, 30)))
    (root / "more" / "png" / "café blue.png").write_bytes(png_bytes((30, 30, 200)))
    (root / "more" / "notes.txt").write_text("not an image")
    return root


def predict(*args: str, key: str = KEY) -> subprocess.CompletedProcess[str]:
    """``ocellus predict ARGS`` in a subprocess, with `key` in ``OCELLUS_API_KEY``."""
    return subprocess.run([sys.executable, "-m", "cli.main", "predict", *args], cwd=ROOT,
                          env={**os.environ, "OCELLUS_API_KEY": key}, capture_output=True,
                          text=True, timeout=300)


def lines(text: str) -> dict[str, dict[str, Any]]:
    """JSON lines by their file's name."""
    records = [json.loads(line) for line in text.splitlines()]
    by_name = {Path(r["file"]).name: r for r in records}
    assert len(by_name) == len(records), "one line per image"
    return by_name


def direct(url: str, path: Path, route: str, **params: Any) -> dict[str, Any]:
    """What one POST of `path` answers, as the client's line would give it."""
    r = httpx.post(f"{url}{route}", params=params, headers={"X-API-Key": KEY}, timeout=60,
                   files={"file": (path.name, path.read_bytes(), "application/octet-stream")})
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    return {"file": str(path), "model": r.json()["model"], **result}


def posts(url: str, route: str) -> float:
    """POSTs to `route` that the server has counted, whatever their status."""
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
    return sum(s.value for f in families if f.name == "ocellus_http_requests"
               for s in f.samples if s.name.endswith("_total")
               and s.labels["route"] == route and s.labels["method"] == "POST")


def test_a_folder_gives_one_line_per_image_as_a_direct_post(server, photos: Path) -> None:
    done = predict("--url", server.url, str(photos), "--top-k", "3")
    assert done.returncode == 0, done.stderr
    got = lines(done.stdout)
    images = sorted(p for p in photos.rglob("*") if p.suffix in (".jpg", ".png"))
    assert sorted(got) == sorted(p.name for p in images)  # notes.txt left out
    for path in images:
        assert got[path.name] == direct(server.url, path, "/v1/classify", top_k=3)
    assert got["café blue.png"]["filename"] == "café blue.png"
    assert "with a result, 0 failed" in done.stderr


def test_detect_with_its_options_and_the_key_as_a_flag(server, photos: Path) -> None:
    chosen = [photos / "dog.jpg", photos / "more" / "red.png"]
    done = predict("--url", server.url, "--task", "detect", "--model", "tinydet",
                   "--conf", "0.05", "--iou", "0.6", "--api-key", KEY, *map(str, chosen),
                   key="")
    assert done.returncode == 0, done.stderr
    got = lines(done.stdout)
    for path in chosen:
        assert got[path.name] == direct(server.url, path, "/v1/detect", model="tinydet",
                                        conf=0.05, iou=0.6)
        assert got[path.name]["model"]["name"] == "tinydet"


def test_a_bad_image_is_an_error_line_and_the_others_are_answered(server,
                                                                  tmp_path: Path) -> None:
    (tmp_path / "good.png").write_bytes(png_bytes())
    (tmp_path / "broken.jpg").write_text("not a JPEG")
    (tmp_path / "empty.png").write_bytes(b"")
    # Refused once the limit is crossed, with the rest of its upload unread.
    (tmp_path / "huge.jpg").write_bytes(os.urandom(MAX_UPLOAD_BYTES * 3 // 2))
    missing = tmp_path / "elsewhere" / "missing.png"
    done = predict("--url", server.url, str(tmp_path), str(missing))
    assert done.returncode == 1
    got = lines(done.stdout)
    assert len(got["good.png"]["predictions"]) == 3
    for name in ("broken.jpg", "empty.png"):
        assert got[name]["error"]["status"] == 400
        assert got[name]["error"]["code"] == "bad_image"
        assert "predictions" not in got[name]
    assert got["huge.jpg"]["error"]["status"] == 413
    assert got["huge.jpg"]["error"]["code"] == "too_large"
    assert got["missing.png"]["error"]["status"] is None
    assert got["missing.png"]["error"]["code"] == "unreadable"


def test_out_resumes_skipping_what_it_records_and_retrying_what_failed(server,
                                                                      tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i, color in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        (images / f"{i}.png").write_bytes(png_bytes(color))
    (images / "3.png").write_text("not yet a PNG")
    out = tmp_path / "results" / "out.jsonl"
    before = posts(server.url, "/v1/classify")
    first = predict("--url", server.url, str(images), "--out", str(out))
    assert first.returncode == 1 and first.stdout == ""
    assert posts(server.url, "/v1/classify") - before == 4
    assert lines(out.read_text())["3.png"]["error"]["code"] == "bad_image"

    # Mended, and the file cut off in the middle of a line, as by a kill.
    (images / "3.png").write_bytes(png_bytes((90, 90, 90)))
    with out.open("a") as f:
        f.write('{"file": "' + str(images / "0.png"))
    second = predict("--url", server.url, str(images), "--out", str(out))
    assert second.returncode == 0, second.stderr
    assert posts(server.url, "/v1/classify") - before == 5  # only 3.png again
    got = lines(out.read_text())
    assert sorted(got) == ["0.png", "1.png", "2.png", "3.png"]
    assert all("predictions" in r for r in got.values())
    assert "3 skipped" in second.stderr

    third = predict("--url", server.url, str(images), "--out", str(out))
    assert third.returncode == 0 and posts(server.url, "/v1/classify") - before == 5
    assert lines(out.read_text()) == got

    fresh = predict("--url", server.url, str(images), "--out", str(out), "--overwrite")
    assert fresh.returncode == 0 and posts(server.url, "/v1/classify") - before == 9
    assert lines(out.read_text()) == got


def test_a_wrong_key_or_model_stops_before_any_upload(server, photos: Path) -> None:
    before = posts(server.url, "/v1/classify")
    refused = predict("--url", server.url, str(photos), key="wrong")
    assert refused.returncode == 2 and refused.stdout == ""
    assert "401 unauthorized: invalid API key" in refused.stderr
    unknown = predict("--url", server.url, str(photos), "--model", "nope")
    assert unknown.returncode == 2
    assert "expected a classify model named 'nope'" in unknown.stderr
    assert "tiny (classify), tinydet (detect)" in unknown.stderr
    assert posts(server.url, "/v1/classify") == before


def test_503_retry_after_is_waited_out_until_every_image_has_its_result(
        start_server, tiny_exports: list[Path], photos: Path) -> None:
    busy = start_server("--model", str(tiny_exports[0]),
                        env={**QUICK_START, "OCELLUS_MAX_IN_FLIGHT": "1"})
    started = time.monotonic()
    done = predict("--url", busy.url, str(photos), "--concurrency", "8", "--retries", "30")
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    got = lines(done.stdout)
    assert len(got) == len([p for p in photos.rglob("*") if p.suffix in (".jpg", ".png")])
    assert all("predictions" in r for r in got.values())
    families = {f.name: f for f in text_string_to_metric_families(
        httpx.get(f"{busy.url}/metrics").text)}
    (overloads,) = [s.value for s in families["ocellus_rejected_requests"].samples
                    if s.labels == {"reason": "overload"} and s.name.endswith("_total")]
    assert overloads > 0  # 503s were answered, and each was retried
    assert elapsed >= 1.0  # after its Retry-After: 1
