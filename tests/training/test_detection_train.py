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
from models.detection.predictor import DetectionPredictor
from models.export import Manifest
from models.predictor import load_predictor
from training.data.synth_detect import synth_detect
from training.detection.dataset import YoloDetectionDataset, load_data_yaml
from training.detection.train import evaluate, get_args_parser, main

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
    manifest = Manifest(task="detect", architecture={"name": "detector",
                                                     "args": untrained.model_args},
                        labels=spec.names, preprocessing=untrained.preprocessing.to_dict())
    before = evaluate(DetectionPredictor(untrained, manifest), val)

    out = tmp_path / "run"
    written = main(get_args_parser().parse_args([
        "--data", str(data), "--out", str(out), "--epochs", "10", "--img-size", str(IMG_SIZE),
        "--batch-size", "16", "--lr", "2e-3", "--seed", "0", "--no-progress"]))
    after = written.metrics["val"]
    assert before["map50"] < 0.05
    assert after["map50"] >= MAP50_FLOOR, after
    assert after["map50"] >= before["map50"] + 0.3
    assert after["map50_95"] > before["map50_95"] + 0.1
    assert set(after["per_class_ap"]) == set(spec.names)
    # The export is the best epoch, and it scores what its history says.
    again = evaluate(load_predictor(out), val)
    assert again["map50"] == pytest.approx(after["map50"], abs=1e-6)
    history = written.training["history"]
    assert max(h["val_map50_95"] for h in history) == pytest.approx(after["map50_95"])
