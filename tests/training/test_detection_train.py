"""A short REAL training run: pretrained EfficientNet-Lite0 on a synth-detect set.

Measured on the 2-core dev machine (200 images: 160 train / 40 val, 256 px,
10 epochs, whole network trained): untrained mAP50 0.000, trained mAP50 0.565
(mAP50-95 0.327), about 9 s per epoch and 100 s in all when the machine is
otherwise idle. The floors below leave a wide margin for run-to-run and
platform differences.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.detection import Detector
from training.data.synth_detect import synth_detect
from training.detection.dataset import YoloDetectionDataset, load_data_yaml
from training.detection.evaluate import evaluate_detector
from training.detection.fit import train_detector

MAP50_FLOOR = 0.35
IMG_SIZE = 256


@pytest.mark.slow
def test_training_raises_held_out_map50_well_above_untrained(tmp_path: Path) -> None:
    data = synth_detect(tmp_path / "synth", images=200, seed=0, img_size=320)
    spec = load_data_yaml(data)
    val = YoloDetectionDataset(spec.val, len(spec.names), img_size=IMG_SIZE)

    torch.manual_seed(0)
    untrained = Detector("efficientnet_lite0", len(spec.names), img_size=IMG_SIZE,
                         backbone_weights="imagenet")
    before = evaluate_detector(untrained, val, spec.names)

    result = train_detector(data, tmp_path / "run", backbone="efficientnet_lite0",
                            backbone_weights="imagenet", epochs=10, img_size=IMG_SIZE,
                            batch_size=16, lr=2e-3, seed=0, progress=False)
    after = result.metrics
    assert before["map50"] < 0.05
    assert after["map50"] >= MAP50_FLOOR, after
    assert after["map50"] >= before["map50"] + 0.3
    assert after["map50_95"] > before["map50_95"] + 0.1
    assert set(after["per_class_ap"]) == set(spec.names)
    # The returned model is best.pt, and it scores what its checkpoint says.
    again = evaluate_detector(result.model, val, spec.names)
    assert again["map50"] == pytest.approx(after["map50"], abs=1e-6)
    assert max(h["map50_95"] for h in result.history) == pytest.approx(after["map50_95"])
