"""DetectionPredictor: letterbox in, decode + NMS out, boxes exactly in original pixels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from models.classification.predictor import ClassificationPredictor
from models.detection import Detector, boxes_from_letterbox, letterbox, postprocess
from models.detection.predictor import Detection, DetectionPredictor
from models.export import Manifest, save_export
from models.predictor import load_predictor
from models.preprocess import Preprocessing

SIZE = 64


class FixedDecoder(nn.Module):
    """Any model with ``decode(raw) -> (boxes (B, A, 4) input px, probs (B, A, C))``."""

    def __init__(self, boxes: torch.Tensor, probs: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("boxes", boxes)  # (A, 4)
        self.register_buffer("probs", probs)  # (A, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0])  # (B,): the batch size is all decode needs

    def decode(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = raw.shape[0]
        return self.boxes.expand(b, -1, -1), self.probs.expand(b, -1, -1)


@torch.inference_mode()
def _oracle(model: Detector, image: torch.Tensor, **options) -> torch.Tensor:
    """Boxes (N, 4) in `image`'s pixels, straight from the detection parts."""
    pre = model.preprocessing
    canvas, params = letterbox(image, model.img_size, interpolation=pre.interpolation_mode)
    boxes, scores = model.decode(model(pre.normalize(canvas)[None]))
    (dets,) = postprocess(boxes, scores, **options)
    return boxes_from_letterbox(dets.boxes, params)


def _manifest(labels: list[str]) -> Manifest:
    return Manifest(task="detect", architecture={"name": "fixed"}, labels=labels,
                    preprocessing=Preprocessing(crop_size=SIZE, resize_size=SIZE,
                                                mode="letterbox").to_dict())


def test_boxes_map_back_to_original_pixels_through_a_reduced_decode() -> None:
    # A 32x64 tensor (a 1/8 draft decode of a 256x512 original) letterboxes into
    # 64x64 as a 32-row band at rows 16..48. Box edges in that band map to the original.
    boxes = torch.tensor([[0.0, 16.0, 64.0, 48.0], [16.0, 24.0, 32.0, 40.0],
                          [-5.0, 0.0, 70.0, 60.0]])
    probs = torch.tensor([[0.9, 0.0], [0.0, 0.8], [0.1, 0.05]])
    predictor = DetectionPredictor(FixedDecoder(boxes, probs), _manifest(["a", "b"]))
    image = torch.randint(0, 256, (3, 32, 64), dtype=torch.uint8)
    x, meta = predictor.preprocess(image, original_size=(512, 256))
    assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32
    (dets,) = predictor.postprocess(predictor.forward(x[None]), [meta], conf=0.2)
    assert dets == [Detection("a", 0, pytest.approx(0.9), [0.0, 0.0, 512.0, 256.0]),
                    Detection("b", 1, pytest.approx(0.8), [128.0, 64.0, 256.0, 192.0])]
    # Without original_size the same boxes are in the tensor's own pixels.
    _, meta = predictor.preprocess(image)
    (dets,) = predictor.postprocess(predictor.forward(x[None]), [meta], conf=0.2)
    assert dets[1].box == [16.0, 8.0, 32.0, 24.0]
    # Knobs: class filter, threshold (a box clipped into the image survives at conf 0.05).
    (only_b,) = predictor.postprocess(predictor.forward(x[None]), [meta], conf=0.2,
                                      classes=[1])
    assert [d.label for d in only_b] == ["b"]
    (low,) = predictor.postprocess(predictor.forward(x[None]), [meta], conf=0.05, iou=1.0)
    assert len(low) == 3 and low[-1].box == [0.0, 0.0, 64.0, 32.0]


def test_predict_maps_boxes_back_through_original_sizes() -> None:
    """`Predictor.predict` (what `ocellus predict` calls after a reduced decode) takes each
    image's original size, as the service's preprocess does: boxes in the upload's pixels."""
    boxes = torch.tensor([[0.0, 16.0, 64.0, 48.0], [16.0, 24.0, 32.0, 40.0]])
    probs = torch.tensor([[0.9, 0.0], [0.0, 0.8]])
    predictor = DetectionPredictor(FixedDecoder(boxes, probs), _manifest(["a", "b"]))
    image = torch.randint(0, 256, (3, 32, 64), dtype=torch.uint8)  # a 1/8 decode of 512x256
    (dets,) = predictor.predict([image], original_sizes=[(512, 256)], conf=0.2)
    assert [d.box for d in dets] == [[0.0, 0.0, 512.0, 256.0], [128.0, 64.0, 256.0, 192.0]]
    (own,) = predictor.predict([image], conf=0.2)  # none given: the tensor's own pixels
    assert own[1].box == [16.0, 8.0, 32.0, 24.0]


def test_export_round_trip_gives_a_detection_predictor(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Detector("efficientnet_lite0", 3, width=32, img_size=SIZE, backbone_weights=None)
    manifest = Manifest(task="detect", architecture={"name": "detector", "args": model.model_args},
                        labels=["x", "y", "z"], preprocessing=model.preprocessing.to_dict())
    save_export(model, tmp_path / "export", manifest)
    predictor = load_predictor(tmp_path / "export")
    assert isinstance(predictor, DetectionPredictor) and predictor.input_size == SIZE
    images = [torch.randint(0, 256, (3, 40, 90), dtype=torch.uint8),
              torch.randint(0, 256, (3, 120, 30), dtype=torch.uint8)]
    results = predictor.predict(images, conf=0.0, max_det=7)
    for image, dets in zip(images, results, strict=True):
        h, w = image.shape[-2:]
        assert 0 < len(dets) <= 7
        for d in dets:
            assert d.label == ["x", "y", "z"][d.class_id] and 0 <= d.score <= 1
            x1, y1, x2, y2 = d.box
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
    # The same as an oracle written from the parts (letterbox, decode, NMS, map back).
    torch.testing.assert_close(torch.tensor([d.box for d in results[0]]),
                               _oracle(model.eval(), images[0], conf=0.0, max_det=7),
                               atol=1e-3, rtol=1e-4)


def test_classification_predictor_ignores_original_size() -> None:
    from models.classification.classifier import ImageClassifier

    model = ImageClassifier("efficientnet_lite0", 2, backbone_weights=None)
    manifest = Manifest(task="classify", architecture={"name": "classifier"}, labels=["a", "b"],
                        preprocessing=Preprocessing(crop_size=SIZE, resize_size=SIZE).to_dict())
    predictor = ClassificationPredictor(model, manifest)
    image = torch.randint(0, 256, (3, 80, 80), dtype=torch.uint8)
    x, meta = predictor.preprocess(image, original_size=(640, 640))
    assert meta is None
    torch.testing.assert_close(x, predictor.preprocess(image)[0])


def test_detector_outputs_are_batch_major_and_split_by_image(tmp_path: Path) -> None:
    # The service batches requests and cuts raw outputs by rows: every tensor is (B, ...).
    torch.manual_seed(0)
    model = Detector("efficientnet_lite0", 2, width=32, img_size=SIZE, backbone_weights=None)
    manifest = Manifest(task="detect", architecture={"name": "detector", "args": model.model_args},
                        labels=["a", "b"], preprocessing=model.preprocessing.to_dict())
    predictor = DetectionPredictor(model, manifest)
    images = [torch.randint(0, 256, (3, 50 + 10 * i, 70), dtype=torch.uint8) for i in range(3)]
    inputs, metas = zip(*(predictor.preprocess(im) for im in images), strict=True)
    raw = predictor.forward(torch.stack(inputs))
    assert type(raw) is tuple and all(t.shape[0] == 3 for t in raw)
    whole = predictor.postprocess(raw, list(metas), conf=0.0, max_det=5)
    for i in range(3):
        (alone,) = predictor.postprocess(tuple(t[i:i + 1] for t in raw), [metas[i]], conf=0.0,
                                         max_det=5)
        assert alone == whole[i]
