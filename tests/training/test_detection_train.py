"""A REAL training run raises held-out mAP well above an untrained model's.

The run is the session's shared `detector_export`: pretrained EfficientNet-Lite0,
8 epochs on 96 synth-detect images at 192 px, whole network trained. Measured on
the 2-core dev machine: untrained val mAP50 0.000 (mAP50-95 0.000), trained
mAP50 0.22 (mAP50-95 0.08), with AP for all five classes. The floors leave a wide
margin for run-to-run and platform differences; `benchmarks/detection.py` measures
how far longer training goes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.detection import Detector
from models.detection.predictor import DetectionPredictor
from models.export import Manifest
from models.predictor import load_predictor
from training.detection.dataset import YoloDetectionDataset, load_data_yaml
from training.detection.train import evaluate

MAP50_FLOOR = 0.12
MAP50_95_GAIN = 0.04


@pytest.mark.slow
def test_training_raises_held_out_map50_well_above_untrained(
        detector_export: tuple[Path, Manifest], synth_detect_yaml: Path) -> None:
    export, written = detector_export
    spec = load_data_yaml(synth_detect_yaml)
    img_size = written.architecture["args"]["img_size"]
    val = YoloDetectionDataset(spec.val, len(spec.names), img_size=img_size)

    torch.manual_seed(0)
    untrained = Detector("efficientnet_lite0", len(spec.names), img_size=img_size,
                         backbone_weights="imagenet")
    manifest = Manifest(task="detect", architecture={"name": "detector",
                                                     "args": untrained.model_args},
                        labels=spec.names, preprocessing=untrained.preprocessing.to_dict())
    before = evaluate(DetectionPredictor(untrained, manifest), val)

    after = written.metrics["val"]
    assert before["map50"] < 0.05
    assert after["map50"] >= MAP50_FLOOR, after
    assert after["map50"] >= before["map50"] + 0.1
    assert after["map50_95"] >= before["map50_95"] + MAP50_95_GAIN
    assert set(after["per_class_ap"]) == set(spec.names)
    # The export is the best epoch, and it scores what its history says.
    again = evaluate(load_predictor(export), val)
    assert again["map50"] == pytest.approx(after["map50"], abs=1e-6)
    history = written.training["history"]
    assert max(h["val_map50_95"] for h in history) == pytest.approx(after["map50_95"])
