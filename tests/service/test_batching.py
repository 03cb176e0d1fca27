"""Serving under load: micro-batching, back-pressure, timeouts and backend choice.

HTTP behaviour goes through real uvicorn processes (the micro-batcher alone, with a
fake model, is tested in test_batcher.py; backend selection in test_backends.py).
No test is timed.
"""

from __future__ import annotations

import asyncio
import io
import re
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

IMAGENET_CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    from skimage import data

    return {"chelsea": _jpeg(data.chelsea()), "coffee": _jpeg(data.coffee())}


@pytest.fixture(scope="module")
def classifier_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.defaults import default_classifier_export

    return default_classifier_export(tmp_path_factory.mktemp("cache"), "efficientnet_lite0")


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 if absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _burst(url: str, bodies: list[list[tuple[str, bytes]]], **params) -> list:
    async with httpx.AsyncClient(timeout=120) as client:
        return await asyncio.gather(*(
            client.post(f"{url}/v1/classify", params=params,
                        files=[("file", (name, data, "image/jpeg")) for name, data in body])
            for body in bodies))


@pytest.fixture(scope="module")
def batching_server(start_server, classifier_export):
    # A long max delay makes batching certain whenever requests overlap; batch-size
    # tuning is off so that the batcher may form batches of up to 8 whatever it measures.
    return start_server("--model", str(classifier_export),
                        env={"OCELLUS_MAX_DELAY_MS": "200", "OCELLUS_MAX_BATCH_SIZE": "8",
                             "OCELLUS_BACKEND": "auto", "OCELLUS_TUNE_BATCH_SIZE": "false"})


@pytest.mark.slow  # a real server
def test_concurrent_requests_share_batches_and_get_their_own_answers(batching_server,
                                                                     photos) -> None:
    url = batching_server.url
    names = ["chelsea", "coffee"] * 8
    for _ in range(5):  # bounded: batching needs requests to overlap, which is near certain
        responses = asyncio.run(_burst(url, [[(f"{n}-{i}.jpg", photos[n])]
                                             for i, n in enumerate(names)], top_k=1))
        for i, (name, r) in enumerate(zip(names, responses, strict=True)):
            assert r.status_code == 200, r.text
            (result,) = r.json()["results"]
            assert result["filename"] == f"{name}-{i}.jpg"
            label = result["predictions"][0]["label"]
            assert label in IMAGENET_CATS if name == "chelsea" else label == "espresso", label
        text = httpx.get(f"{url}/metrics").text
        count = _metric(text, "ocellus_batch_size_count", model="imagenet")
        images = _metric(text, "ocellus_batch_size_sum", model="imagenet")
        if count and images / count > 1:
            break
    assert count and images / count > 1, f"no batching: {images} images in {count} forwards"
    assert _metric(text, "ocellus_inference_duration_seconds_count", model="imagenet",
                   stage="forward") == count


@pytest.mark.slow  # a real server
def test_multi_image_requests_are_not_split_wrongly(batching_server, photos) -> None:
    order = ["coffee", "chelsea", "chelsea", "coffee", "coffee"]
    multi = [(f"{n}.jpg", photos[n]) for n in order]
    singles = [[("c.jpg", photos["chelsea"])]] * 6
    responses = asyncio.run(_burst(batching_server.url, [multi, *singles, multi], top_k=1))
    for r in (responses[0], responses[-1]):
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["filename"] for x in results] == [f"{n}.jpg" for n in order]
        for name, x in zip(order, results, strict=True):
            label = x["predictions"][0]["label"]
            assert label in IMAGENET_CATS if name == "chelsea" else label == "espresso"
    for r in responses[1:-1]:
        assert r.json()["results"][0]["predictions"][0]["label"] in IMAGENET_CATS


@pytest.mark.slow  # a real server
def test_models_report_the_backend_and_why(batching_server) -> None:
    (model,) = httpx.get(f"{batching_server.url}/v1/models").json()["models"]
    details = model["backend_details"]
    assert model["backend"] == details["name"]
    assert details["requested"] == "auto"
    assert details["agreement"][details["name"]] >= 0.995
    assert details["sample_images"] > 0 and "eager" in details["throughput"]


@pytest.mark.slow  # a real server
def test_full_queue_answers_503_with_retry_after(start_server, classifier_export,
                                                 photos) -> None:
    server = start_server("--model", str(classifier_export),
                          env={"OCELLUS_MAX_QUEUE": "2", "OCELLUS_MAX_BATCH_SIZE": "1",
                               "OCELLUS_MAX_DELAY_MS": "0", "OCELLUS_BACKEND": "eager",
                               "OCELLUS_TUNE_BATCH_SIZE": "false"})
    body = [("c.jpg", photos["chelsea"])]
    for _ in range(4):  # bounded: a burst of 32 against a queue of 2 overflows it
        responses = asyncio.run(_burst(server.url, [body] * 32))
        overloaded = [r for r in responses if r.status_code == 503]
        if overloaded:
            break
    assert overloaded, [r.status_code for r in responses]
    assert {r.status_code for r in responses} <= {200, 503}
    assert any(r.status_code == 200 for r in responses)
    r = overloaded[0]
    assert int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "overloaded"
    text = httpx.get(f"{server.url}/metrics").text
    assert _metric(text, "ocellus_rejected_requests_total", reason="overload") == len(overloaded)
    # A request larger than the whole queue can never be served: 413, not a retry.
    r = httpx.post(f"{server.url}/v1/classify", files=[("file", ("c.jpg", photos["chelsea"],
                                                                  "image/jpeg"))] * 3)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_files", r.text


@pytest.mark.slow  # a real server
def test_request_timeout_answers_503(start_server, classifier_export, photos) -> None:
    # Any forward takes longer than 1 µs, so every request times out.
    server = start_server("--model", str(classifier_export),
                          env={"OCELLUS_REQUEST_TIMEOUT_S": "0.000001",
                               "OCELLUS_BACKEND": "eager", "OCELLUS_TUNE_BATCH_SIZE": "false"})
    r = httpx.post(f"{server.url}/v1/classify",
                   files={"file": ("c.jpg", photos["chelsea"], "image/jpeg")}, timeout=60)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "timeout" and "Retry-After" in r.headers
    text = httpx.get(f"{server.url}/metrics").text
    assert _metric(text, "ocellus_rejected_requests_total", reason="timeout") == 1
    assert server.alive()


@pytest.mark.slow  # a real server
def test_graceful_shutdown_finishes_the_request_in_flight(start_server, classifier_export,
                                                          photos) -> None:
    from concurrent.futures import ThreadPoolExecutor

    # Batches of one image: a 16-image request takes 16 forward passes.
    server = start_server("--model", str(classifier_export),
                          env={"OCELLUS_MAX_BATCH_SIZE": "1", "OCELLUS_BACKEND": "eager",
                               "OCELLUS_TUNE_BATCH_SIZE": "false"})
    files = [("file", (f"{i}.jpg", photos["coffee"], "image/jpeg")) for i in range(16)]
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, f"{server.url}/v1/classify", files=files, timeout=120)
        for _ in range(600):  # bounded wait until the request is inside the batcher
            text = httpx.get(f"{server.url}/metrics").text
            if _metric(text, "ocellus_requests_in_flight") >= 1 or pending.done():
                break
            time.sleep(0.02)
        assert not pending.done(), "the request finished before the shutdown began"
        server.proc.terminate()  # SIGTERM: uvicorn's graceful shutdown
        r = pending.result()
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["filename"] for x in results] == [f"{i}.jpg" for i in range(16)]
    assert all(x["predictions"][0]["label"] == "espresso" for x in results)
    # uvicorn re-raises the signal once its shutdown is done.
    assert server.proc.wait(60) in (0, -signal.SIGTERM)


def test_batch_size_tuning_picks_the_largest_size_within_tolerance() -> None:
    from service.batch_tuning import candidate_sizes, preferred_batch_size

    assert candidate_sizes(8) == [1, 2, 4, 8] and candidate_sizes(6) == [1, 2, 4, 6]
    assert candidate_sizes(1) == [1]

    def forward(x: torch.Tensor) -> None:  # 2 ms per image up to batch 2, then 4 ms
        time.sleep((0.002 if len(x) <= 2 else 0.004) * len(x))

    report = preferred_batch_size(forward, 8, 8, rounds=2)
    assert report.preferred == 2 and report.max == 8, report
    assert set(report.images_per_second) == {1, 2, 4, 8}
    assert report.images_per_second[2] > 1.5 * report.images_per_second[8]
    flat = preferred_batch_size(lambda x: time.sleep(0.002 * len(x)), 8, 4, rounds=2)
    assert flat.preferred == 4, flat  # no size is faster per image: the largest wins


@pytest.mark.slow  # a real server
def test_served_models_report_the_batch_size_they_measured(default_server) -> None:
    for model in httpx.get(f"{default_server.url}/v1/models").json()["models"]:
        batching = model["batching"]
        speeds = {int(b): v for b, v in batching["images_per_second"].items()}
        assert set(speeds) == {1, 2, 4, 8} and batching["max"] == 8, batching
        # The largest size within 10% of the fastest per image (service/batch_tuning.py).
        within = [b for b, v in speeds.items() if v >= max(speeds.values()) / 1.1]
        assert batching["preferred"] == max(within), batching
