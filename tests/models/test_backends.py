"""Backends split by request exactly as eager does; `auto` checks through the same split."""

from __future__ import annotations

import time

import pytest
import torch

from models.backends import BUILDERS, rows, select_backend
from models.detection import Detector
from models.detection.predictor import DetectionPredictor
from models.export import Manifest
from models.sample_images import real_images

SIZE = 64


@pytest.fixture(scope="module")
def detector() -> DetectionPredictor:
    torch.manual_seed(0)
    model = Detector("efficientnet_lite0", 3, width=32, img_size=SIZE, backbone_weights=None)
    manifest = Manifest(task="detect", architecture={"name": "detector", "args": model.model_args},
                        labels=["x", "y", "z"], preprocessing=model.preprocessing.to_dict())
    return DetectionPredictor(model, manifest)


def _inputs(predictor: DetectionPredictor, n: int) -> tuple[torch.Tensor, list]:
    gen = torch.Generator().manual_seed(n)
    images = [torch.randint(0, 256, (3, 40 + 7 * i, 90 - 5 * i), dtype=torch.uint8,
                            generator=gen) for i in range(n)]
    inputs, metas = zip(*(predictor.preprocess(im) for im in images), strict=True)
    return torch.stack(inputs), list(metas)


def test_every_output_of_every_backend_is_batch_major(detector) -> None:
    x, _ = _inputs(detector, 5)
    for name in ("eager", "compiled"):
        outputs = BUILDERS[name](detector, torch.zeros(2, 3, SIZE, SIZE))(x)
        assert all(t.shape[0] == 5 for t in outputs), (name, [t.shape for t in outputs])


def test_compiled_detector_answers_each_request_as_eager_does_alone(detector) -> None:
    # Three requests with different options share one forward of 5 images, as in the
    # batcher when their options differ: each is cut out of the batch by its rows.
    x, metas = _inputs(detector, 5)
    compiled = BUILDERS["compiled"](detector, torch.zeros(2, 3, SIZE, SIZE))
    outputs = compiled(x)
    requests = [(0, 1, {"conf": 0.0, "max_det": 5}), (1, 3, {"conf": 0.0, "max_det": 9}),
                (3, 5, {"conf": 0.0, "agnostic": True, "max_det": 7})]
    for start, stop, options in requests:
        got = detector.postprocess(rows(outputs, start, stop, 5), metas[start:stop], **options)
        alone = detector.postprocess(detector.forward(x[start:stop]), metas[start:stop],
                                     **options)
        assert [len(d) for d in got] == [len(d) for d in alone] and any(got)
        for g_img, a_img in zip(got, alone, strict=True):
            for g, a in zip(g_img, a_img, strict=True):
                assert g.class_id == a.class_id
                assert g.score == pytest.approx(a.score, abs=1e-4)
                assert g.box == pytest.approx(a.box, abs=1e-2)


def test_rows_refuses_outputs_that_are_not_batch_major() -> None:
    anchors = torch.zeros(21, 2)  # shared by every image, as a traced graph once returned
    with pytest.raises(ValueError, match="batch-major outputs of 4 rows"):
        rows((torch.zeros(4, 21, 3), anchors), 1, 2, 4)


def _slow_eager(predictor, example):
    """The eager reference, made slower so that the candidate is timed as faster."""
    def forward(batch):
        time.sleep(0.02)
        return predictor.forward(batch)
    return forward


def _shared_anchors(predictor, example):
    """A fast path right for whole batches, wrong for a request cut out of one: anchors and
    strides come back ``(A, 2)`` and ``(A, 1)``, not batch-major."""
    def forward(batch):
        dist, cls, anchors, strides = predictor.forward(batch)
        return dist, cls, anchors[0], strides[0]
    return forward


def test_auto_refuses_a_backend_whose_outputs_cannot_be_split_by_request(detector) -> None:
    _, report = select_backend(detector, "auto", real_images(limit=8), batch_size=4,
                               builders={"eager": _slow_eager,
                                         "shared": _shared_anchors})
    assert report.name == "eager", report
    assert "shared failed on real images" in report.reason
    assert "batch-major" in report.reason
