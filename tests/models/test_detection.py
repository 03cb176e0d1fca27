"""Letterbox mapping, DFL decoding, NMS, and boxes mapped back through the predictor."""

from __future__ import annotations

import json
import math

import pytest
import torch

from models.detection import (
    Detector,
    DetectorOutput,
    boxes_from_letterbox,
    boxes_to_letterbox,
    decode_boxes,
    letterbox,
    letterbox_params,
    make_anchors,
    postprocess,
)
from models.detection.postprocess import Detections
from models.detection.predictor import DetectionPredictor
from models.export import Manifest


def _rect_image(h: int, w: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    image = torch.zeros((3, h, w), dtype=torch.uint8)
    x1, y1, x2, y2 = box
    image[:, y1:y2, x1:x2] = 255
    return image


def _pixel_bbox(image: torch.Tensor) -> torch.Tensor:
    """Edge-coordinate xyxy of the bright (>127, in every channel) pixels."""
    ys, xs = torch.nonzero((image > 127).all(0), as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


@pytest.mark.parametrize("hw", [(480, 640), (640, 480), (100, 100), (37, 211), (150, 90)])
def test_letterbox_box_mapping_round_trips_exactly(hw: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(0)
    h, w = hw
    p = letterbox_params(h, w, 320)
    xy = torch.rand((50, 2), generator=g) * torch.tensor([w, h])
    wh = torch.rand((50, 2), generator=g) * torch.tensor([w, h]) / 2
    boxes = torch.cat([xy, xy + wh], 1).clamp(max=torch.tensor([w, h, w, h]))
    back = boxes_from_letterbox(boxes_to_letterbox(boxes.double(), p), p)
    assert torch.allclose(back, boxes.double(), atol=1e-9)
    # The whole image maps onto the non-padded area of the canvas.
    full = boxes_to_letterbox(torch.tensor([[0.0, 0, w, h]], dtype=torch.float64), p)[0]
    assert full.tolist() == pytest.approx(
        [p.pad_left, p.pad_top, p.pad_left + p.new_w, p.pad_top + p.new_h], abs=1e-9)
    assert max(p.new_h, p.new_w) == 320


@pytest.mark.parametrize(("hw", "rect"), [((480, 640), (100, 50, 300, 400)),
                                           ((200, 120), (10, 30, 100, 190)),
                                           ((90, 300), (250, 0, 300, 60))])
def test_letterbox_boxes_follow_the_pixels(hw, rect) -> None:
    image = _rect_image(*hw, rect)
    canvas, p = letterbox(image, 256)
    assert canvas.shape == (3, 256, 256)
    assert int(canvas[0, 0, 0]) == 114 or (p.pad_top == 0 and p.pad_left == 0)
    mapped = boxes_to_letterbox(torch.tensor([rect], dtype=torch.float32), p)[0]
    assert torch.allclose(_pixel_bbox(canvas), mapped, atol=1.0)
    # And back: the rectangle found in the canvas maps onto the original rectangle,
    # within one canvas pixel expressed in original pixels.
    back = boxes_from_letterbox(_pixel_bbox(canvas)[None], p)[0]
    tol = 1.0 / min(p.scale_x, p.scale_y) + 1e-4
    assert torch.allclose(back, torch.tensor(rect, dtype=torch.float32), atol=tol)


def test_anchors_are_cell_centres() -> None:
    points, strides = make_anchors([(2, 2), (1, 1)], [8, 16])
    assert points.tolist() == [[4, 4], [12, 4], [4, 12], [12, 12], [8, 8]]
    assert strides.flatten().tolist() == [8, 8, 8, 8, 16]


def _onehot_logits(bins: list[float], reg_max: int = 16) -> torch.Tensor:
    """DFL logits whose distribution is a point mass (integer) or a two-bin split."""
    logits = torch.full((4, reg_max), -1e4)
    for side, d in enumerate(bins):
        lo = math.floor(d)
        if d == lo:
            logits[side, lo] = 0.0
        else:  # split between lo and lo + 1 so that the expectation is d
            logits[side, lo] = math.log(lo + 1 - d)
            logits[side, lo + 1] = math.log(d - lo)
    return logits.flatten()


def test_dfl_decoding_gives_expected_distance_times_stride() -> None:
    anchors, strides = make_anchors([(2, 2)], [8])  # (4, 2): (4,4) (12,4) (4,12) (12,12)
    dist = torch.stack([_onehot_logits([1, 2, 3, 4]), _onehot_logits([0, 0, 0, 0]),
                        _onehot_logits([2.5, 0.25, 15, 7.75]), _onehot_logits([1, 1, 1, 1])])
    boxes = decode_boxes(dist[None], anchors, strides, reg_max=16)[0]  # (4, 4)
    expected = torch.tensor([
        [4 - 8, 4 - 16, 4 + 24, 4 + 32],
        [12, 4, 12, 4],
        [4 - 20, 12 - 2, 4 + 120, 12 + 62],
        [12 - 8, 12 - 8, 12 + 8, 12 + 8],
    ], dtype=torch.float32)
    assert torch.allclose(boxes, expected, atol=1e-3)


def test_decode_then_postprocess_on_hand_built_head_outputs() -> None:
    model = Detector("resnet18", num_classes=3, img_size=64)
    anchors, strides = make_anchors([(8, 8), (4, 4), (2, 2)], [8, 16, 32])
    a = anchors.shape[0]
    dist = _onehot_logits([1, 1, 1, 1]).repeat(1, a, 1)  # every anchor: 2 strides square
    cls = torch.full((1, a, 3), -10.0)
    cls[0, 9, 2] = 3.0  # anchor (12, 12) at stride 8 → box (4, 4, 20, 20), class 2
    cls[0, 64 + 5, 0] = 1.0  # anchor (24, 24) at stride 16 → box (8, 8, 40, 40), class 0
    boxes, scores = model.decode(DetectorOutput(dist, cls, anchors, strides))
    [det] = postprocess(boxes, scores, conf=0.5)
    assert det.labels.tolist() == [2, 0]
    assert torch.allclose(det.boxes, torch.tensor([[4.0, 4, 20, 20], [8, 8, 40, 40]]))
    assert torch.allclose(det.scores, torch.sigmoid(torch.tensor([3.0, 1.0])))


def _two_image_candidates() -> tuple[torch.Tensor, torch.Tensor]:
    # Image 0: boxes 0 and 1 overlap (IoU 0.81), box 2 elsewhere; classes per test.
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60], [0, 0, 1, 1]]])
    scores = torch.zeros((1, 4, 3))
    return boxes, scores


def test_nms_suppresses_overlaps_per_class_and_keeps_across_classes() -> None:
    boxes, scores = _two_image_candidates()
    scores[0, 0, 1], scores[0, 1, 1], scores[0, 2, 1] = 0.9, 0.8, 0.7  # all class 1
    [det] = postprocess(boxes, scores, conf=0.25, iou=0.5)
    assert det.scores.tolist() == pytest.approx([0.9, 0.7])  # 0.8 suppressed by 0.9
    scores[0, 1, 1], scores[0, 1, 2] = 0.0, 0.8  # the overlapping box is now class 2
    [det] = postprocess(boxes, scores, conf=0.25, iou=0.5)
    assert det.labels.tolist() == [1, 2, 1]  # kept: different classes
    [det] = postprocess(boxes, scores, conf=0.25, iou=0.5, agnostic=True)
    assert det.labels.tolist() == [1, 1] and det.scores.tolist() == pytest.approx([0.9, 0.7])
    [det] = postprocess(boxes, scores, conf=0.25, iou=0.9)  # looser threshold keeps both
    assert len(det) == 3


def test_postprocess_conf_classes_and_max_det() -> None:
    boxes = torch.tensor([[[i * 20.0, 0, i * 20 + 10, 10] for i in range(6)]])  # disjoint
    scores = torch.zeros((1, 6, 3))
    for i, (c, s) in enumerate([(0, 0.9), (1, 0.8), (2, 0.7), (0, 0.6), (1, 0.5), (2, 0.1)]):
        scores[0, i, c] = s
    [det] = postprocess(boxes, scores, conf=0.25)
    assert det.scores.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5])
    [det] = postprocess(boxes, scores, conf=0.25, classes=[1, 2])
    assert det.labels.tolist() == [1, 2, 1]
    [det] = postprocess(boxes, scores, conf=0.25, max_det=2)
    assert det.scores.tolist() == pytest.approx([0.9, 0.8])
    assert det.boxes.tolist() == [[0, 0, 10, 10], [20, 0, 30, 10]]
    [det] = postprocess(boxes, scores, conf=0.95)
    assert len(det) == 0 and det.boxes.shape == (0, 4)


def test_multi_label_keeps_every_class_above_conf_at_an_anchor() -> None:
    boxes = torch.tensor([[[0.0, 0, 10, 10], [40, 0, 50, 10]]])  # (1, 2, 4), disjoint
    scores = torch.tensor([[[0.1, 0.6, 0.4], [0.3, 0.0, 0.0]]])  # anchor 0: cow 0.6, horse 0.4
    [single] = postprocess(boxes, scores, conf=0.25)
    assert single.labels.tolist() == [1, 0]  # the best class per anchor only
    [multi] = postprocess(boxes, scores, conf=0.25, multi_label=True)
    assert multi.labels.tolist() == [1, 2, 0]
    assert multi.scores.tolist() == pytest.approx([0.6, 0.4, 0.3])
    assert multi.boxes[1].tolist() == [0, 0, 10, 10]  # the runner-up keeps its anchor's box
    [only] = postprocess(boxes, scores, conf=0.25, multi_label=True, classes=[2])
    assert only.labels.tolist() == [2]
    [agn] = postprocess(boxes, scores, conf=0.25, multi_label=True, agnostic=True)
    assert agn.labels.tolist() == [1, 0]  # one box per place again


@pytest.mark.parametrize("options", [
    {}, {"multi_label": True}, {"agnostic": True, "iou": 0.3}, {"classes": [0, 3], "conf": 0.1},
    {"max_det": 3, "multi_label": True}, {"max_candidates": 7, "conf": 0.05},
    {"conf": 0.99},  # no candidate in any image
])
def test_postprocess_of_a_batch_equals_each_image_alone(options) -> None:
    """Candidates are picked for the whole batch at once: each image's detections are what
    it gets alone, whatever the other images hold (and an empty batch gives none)."""
    torch.manual_seed(0)
    n, anchors, classes = 5, 60, 4
    xy = torch.rand(n, anchors, 2) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(n, anchors, 2) * 30], dim=-1)
    scores = torch.rand(n, anchors, classes) ** 3
    scores[2] = 0  # an image with nothing in it
    batch = postprocess(boxes, scores, **options)
    assert len(batch) == n
    for i, det in enumerate(batch):
        [alone] = postprocess(boxes[i:i + 1], scores[i:i + 1], **options)
        assert torch.equal(det.boxes, alone.boxes) and torch.equal(det.scores, alone.scores)
        assert torch.equal(det.labels, alone.labels) and det.labels.dtype == torch.int64
        assert torch.all(det.scores[:-1] >= det.scores[1:])  # highest score first
    assert len(batch[2]) == 0
    assert postprocess(boxes[:0], scores[:0], **options) == []


@pytest.mark.slow  # builds, runs and rebuilds a detector per backbone: ~5 s each
@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_detector_shapes_and_rebuild_from_json_args(backbone: str) -> None:
    torch.manual_seed(0)
    model = Detector(backbone, num_classes=4, img_size=128, width=32).eval()
    out = model(torch.randn(2, 3, 128, 128))
    a = 16 * 16 + 8 * 8 + 4 * 4
    assert out.dist.shape == (2, a, 64) and out.cls.shape == (2, a, 4)
    assert out.anchors.shape == (a, 2) and out.strides.shape == (a, 1)
    args = json.loads(json.dumps(model.model_args))
    rebuilt = Detector(**args).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 128, 128)
    assert torch.equal(rebuilt(x).cls, model(x).cls)
    assert model.preprocessing.mode == "letterbox" and model.preprocessing.crop_size == 128


def _detect(predictor: DetectionPredictor, image: torch.Tensor, **options) -> Detections:
    x, meta = predictor.preprocess(image)
    (dets,) = predictor.detect(predictor.forward(x[None]), [meta], **options)
    return dets


def test_predict_maps_boxes_back_to_original_pixels() -> None:
    torch.manual_seed(0)
    model = Detector("resnet18", num_classes=2, img_size=128).eval()
    predictor = DetectionPredictor(model, Manifest(
        task="detect", architecture={"name": "detector", "args": model.model_args},
        labels=["a", "b"], preprocessing=model.preprocessing.to_dict()))
    image = torch.randint(0, 256, (3, 90, 200), dtype=torch.uint8)
    canvas, p = letterbox(image, 128)
    # iou=1: no suppression, so many boxes reach the comparison.
    on_original = _detect(predictor, image, conf=0.0, iou=1.0, max_det=50)
    on_canvas = _detect(predictor, canvas, conf=0.0, iou=1.0, max_det=50)  # letterbox: identity
    assert len(on_original) == 50
    assert torch.allclose(on_original.boxes, boxes_from_letterbox(on_canvas.boxes, p), atol=1e-4)
    assert (on_original.boxes >= 0).all()
    assert (on_original.boxes[:, [0, 2]] <= 200).all()
    assert (on_original.boxes[:, [1, 3]] <= 90).all()
