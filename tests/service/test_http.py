"""End to end through a real uvicorn process on 127.0.0.1."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
from helpers import QUICK_START
from PIL import Image

pytestmark = pytest.mark.slow

IMAGENET_CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def _jpeg(array: np.ndarray, **save_args) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", **save_args)
    return buf.getvalue()


@pytest.fixture(scope="module")
def chelsea_jpeg() -> bytes:
    from skimage import data

    return _jpeg(data.chelsea(), quality=92)


def test_health_ready_models_docs(default_server) -> None:
    url = default_server.url
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{url}/readyz").status_code == 200
    models = httpx.get(f"{url}/v1/models").json()["models"]
    classifier = next(m for m in models if m["task"] == "classify")
    assert len(classifier["manifest"]["labels"]) == 1000
    assert "weights_sha256" in classifier["manifest"]
    assert httpx.get(f"{url}/docs").status_code == 200
    assert "/v1/classify" in httpx.get(f"{url}/openapi.json").json()["paths"]


def test_default_model_names_chelsea_a_cat(default_server, chelsea_jpeg: bytes) -> None:
    r = httpx.post(f"{default_server.url}/v1/classify", params={"top_k": 3},
                   files={"file": ("chelsea.jpg", chelsea_jpeg, "image/jpeg")}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["task"] == "classify"
    (result,) = body["results"]
    assert (result["filename"], result["width"], result["height"]) == ("chelsea.jpg", 451, 300)
    assert len(result["predictions"]) == 3
    assert result["predictions"][0]["label"] in IMAGENET_CATS, result["predictions"]


def test_jpegs_are_answered_as_ocellus_predict_and_the_full_decode_answer_them(
        start_server, chelsea_jpeg: bytes, tmp_path, capsys: pytest.CaptureFixture) -> None:
    """640x480, the commonest camera size: decoded at half size, it would be upsampled to the
    256 px resize, and the classifier's scores moved by up to 0.1 (models/preprocess.py,
    `Preprocessing.decode_size`). Served eager, its answer is the local full decode's.
    A 1280x960 JPEG is decoded at half size by the service and by `ocellus predict` alike:
    both answer the same."""
    import torch

    from cli.main import main as ocellus
    from models.defaults import default_classifier_export
    from models.imaging import decode_image
    from models.predictor import load_predictor
    from service.settings import Settings

    jpegs = {size: _jpeg(np.asarray(Image.open(io.BytesIO(chelsea_jpeg)).resize(size)),
                         quality=90) for size in ((640, 480), (1280, 960))}
    export = default_classifier_export(Settings().cache_dir)
    server = start_server("--model", str(export), env=QUICK_START)

    def served(jpeg: bytes) -> list[dict]:
        r = httpx.post(f"{server.url}/v1/classify", params={"top_k": 5},
                       files={"file": ("photo.jpg", jpeg, "image/jpeg")}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["results"][0]["predictions"]

    def same(a: list[dict], b: list[dict]) -> None:
        assert [p["label"] for p in a] == [p["label"] for p in b]
        for x, y in zip(a, b, strict=True):
            assert abs(x["score"] - y["score"]) < 1e-4, (a, b)

    predictor = load_predictor(export, precision="fp32")
    with torch.inference_mode():
        (full,) = predictor.predict([decode_image(jpegs[640, 480]).tensor], top_k=5)
    same(served(jpegs[640, 480]), [{"label": c.label, "score": c.score} for c in full])

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpegs[1280, 960])
    capsys.readouterr()
    assert ocellus(["predict", "--model", str(export), str(photo)]) == 0
    local = json.loads(capsys.readouterr().out)
    assert (local["width"], local["height"]) == (1280, 960)
    same(served(jpegs[1280, 960]), local["results"])


def test_several_files_in_one_request(default_server, chelsea_jpeg: bytes) -> None:
    from skimage import data

    coffee = _jpeg(data.coffee())
    r = httpx.post(f"{default_server.url}/v1/classify",
                   files=[("file", ("a.jpg", chelsea_jpeg, "image/jpeg")),
                          ("file", ("b.jpg", coffee, "image/jpeg"))], timeout=60)
    assert r.status_code == 200, r.text
    a, b = r.json()["results"]
    assert a["filename"] == "a.jpg" and a["predictions"][0]["label"] in IMAGENET_CATS
    assert b["filename"] == "b.jpg" and b["predictions"][0]["label"] == "espresso"


def test_metrics_count_requests_by_route(default_server, chelsea_jpeg: bytes) -> None:
    url = default_server.url
    httpx.post(f"{url}/v1/classify", files={"file": ("c.jpg", chelsea_jpeg, "image/jpeg")},
               timeout=60)
    text = httpx.get(f"{url}/metrics").text
    assert 'ocellus_http_requests_total{method="POST",route="/v1/classify",status="200"}' in text
    assert 'ocellus_http_request_duration_seconds_bucket{le="0.005",route="/v1/classify"}' in text


def test_fashion_mnist_export_is_served(start_server, fashion_model, fashion_mnist_tree) -> None:
    export, _ = fashion_model
    server = start_server("--model", str(export), env=QUICK_START)
    val = fashion_mnist_tree / "val"
    hits = 0
    files = [(cls.name, sorted(cls.iterdir())[0]) for cls in sorted(val.iterdir())]
    for label, path in files:
        r = httpx.post(f"{server.url}/v1/classify",
                       files={"file": (path.name, path.read_bytes(), "image/png")}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"]["name"] == "fashion"
        hits += body["results"][0]["predictions"][0]["label"] == label
    assert hits >= 7, f"only {hits}/10 held-out images classified right"
    # The served model refuses the other task with a clear 4xx.
    r = httpx.post(f"{server.url}/v1/detect", params={"model": "fashion"},
                   files={"file": ("x.png", files[0][1].read_bytes(), "image/png")})
    assert 400 <= r.status_code < 500


def _error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()["error"]
    assert body["status"] == status and body["code"] and body["message"]
    return body["message"]


def test_bad_inputs_get_4xx_and_the_server_stays_up(default_server, chelsea_jpeg) -> None:
    url = f"{default_server.url}/v1/classify"
    post = lambda **kw: httpx.post(url, timeout=60, **kw)  # noqa: E731

    assert "empty" in _error(post(files={"file": ("e.jpg", b"", "image/jpeg")}), 400).lower()
    truncated = chelsea_jpeg[: len(chelsea_jpeg) // 2]
    _error(post(files={"file": ("t.jpg", truncated, "image/jpeg")}), 400)
    _error(post(files={"file": ("x.txt", b"hello, not an image", "text/plain")}), 400)
    assert "file" in _error(post(data={"other": "x"}), 422)
    assert "file" in _error(post(files={"image": ("a.jpg", chelsea_jpeg, "image/jpeg")}), 422)
    _error(post(content=b"{}", headers={"content-type": "application/json"}), 422)
    _error(post(params={"top_k": 0}, files={"file": ("a.jpg", chelsea_jpeg)}), 422)
    _error(post(params={"model": "nope"}, files={"file": ("a.jpg", chelsea_jpeg)}), 404)

    # Unsupported image format: an ICO file is an image, just not one we take.
    ico = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(ico, "ICO")
    assert "ICO" in _error(post(files={"file": ("a.ico", ico.getvalue())}), 415)

    # Decompression bomb: a tiny PNG that declares 30000 x 30000 pixels.
    bomb = io.BytesIO()
    Image.new("1", (30000, 30000)).save(bomb, "PNG")
    assert len(bomb.getvalue()) < 2_000_000
    assert "pixels" in _error(post(files={"file": ("bomb.png", bomb.getvalue())}), 413)

    # Too large an upload: over the byte limit, refused before it is read.
    big = b"\xff\xd8" + b"\0" * (21 * 1024 * 1024)
    _error(post(files={"file": ("big.jpg", big, "image/jpeg")}), 413)

    assert default_server.alive()
    r = post(files={"file": ("ok.jpg", chelsea_jpeg, "image/jpeg")})
    assert r.status_code == 200


@pytest.mark.parametrize("kind", ["cmyk_jpeg", "progressive_jpeg", "png16", "png_alpha",
                                  "webp", "bmp", "tiff", "gif", "exif_rotated"])
def test_common_real_images_work(default_server, kind: str) -> None:
    from skimage import data

    cat = data.chelsea()  # (300, 451, 3)
    img = Image.fromarray(cat)
    buf = io.BytesIO()
    size = (451, 300)
    if kind == "cmyk_jpeg":
        img.convert("CMYK").save(buf, "JPEG", quality=92)
    elif kind == "progressive_jpeg":
        img.save(buf, "JPEG", progressive=True, quality=92)
    elif kind == "png16":
        Image.fromarray(cat[..., 1].astype(np.uint16) * 257).save(buf, "PNG")
    elif kind == "png_alpha":
        img.convert("RGBA").save(buf, "PNG")
    elif kind == "webp":
        img.save(buf, "WEBP", quality=90)
    elif kind == "bmp":
        img.save(buf, "BMP")
    elif kind == "tiff":
        img.save(buf, "TIFF")
    elif kind == "gif":
        frames = [img.convert("P"), Image.new("P", size)]
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    elif kind == "exif_rotated":
        # Stored sideways with orientation 6 ("rotate 90° clockwise to view").
        exif = Image.Exif()
        exif[0x0112] = 6
        img.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", exif=exif, quality=92)
    r = httpx.post(f"{default_server.url}/v1/classify", params={"top_k": 5},
                   files={"file": (f"cat.{kind}", buf.getvalue())}, timeout=60)
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    assert (result["width"], result["height"]) == size
    labels = {p["label"] for p in result["predictions"]}
    if kind != "png16":  # a grayscale cat is still a cat, but not always in the top 5
        assert labels & IMAGENET_CATS, result["predictions"]
