"""Exports round-trip and refuse tampering (every backbone's round trip: test_backbones.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import make_classifier_export

from models.classification.classifier import ImageClassifier
from models.classification.predictor import ClassificationPredictor
from models.errors import ExportError
from models.export import MANIFEST_FILE, WEIGHTS_FILE, load_export
from models.predictor import load_predictor


def _export(tmp_path: Path, backbone: str, num_classes: int = 3) -> tuple[ImageClassifier, Path]:
    out = tmp_path / backbone
    labels = [f"c{i}" for i in range(num_classes)]
    return make_classifier_export(out, backbone, labels=labels), out


def test_an_export_describes_itself_and_loads_alone(tmp_path: Path) -> None:
    model, out = _export(tmp_path, "resnet18")
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    for key in ("task", "architecture", "labels", "preprocessing", "metrics", "dataset",
                "created_at", "weights_sha256"):
        assert key in manifest
    loaded, m = load_export(out)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
    assert m.labels == ["c0", "c1", "c2"]


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    _, out = _export(tmp_path, "resnet18")
    data = bytearray((out / WEIGHTS_FILE).read_bytes())
    data[-10] ^= 0xFF
    (out / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(ExportError, match="sha256 mismatch"):
        load_export(out)


def test_weights_from_another_export_are_refused(tmp_path: Path) -> None:
    _, a = _export(tmp_path / "a", "resnet18", num_classes=3)
    _, b = _export(tmp_path / "b", "resnet18", num_classes=5)
    # Swap in b's weights and fix the hash: the hash passes, the shapes do not.
    (a / WEIGHTS_FILE).write_bytes((b / WEIGHTS_FILE).read_bytes())
    manifest = json.loads((a / MANIFEST_FILE).read_text())
    manifest["weights_sha256"] = json.loads((b / MANIFEST_FILE).read_text())["weights_sha256"]
    (a / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="do not fit"):
        load_export(a)


@pytest.mark.parametrize("change,match", [
    ({"task": "segment"}, "task must be one of"),
    ({"labels": []}, "labels must be"),
    ({"architecture": {"name": "transformer", "args": {}}}, "unknown architecture"),
    # A label per output class: the count is checked at load, not found at postprocess.
    ({"labels": ["c0", "c1"]}, "outputs 3 classes, the manifest names 2 labels"),
    ({"labels": [f"c{i}" for i in range(5)]}, "outputs 3 classes, the manifest names 5"),
])
def test_bad_manifest_is_refused(tmp_path: Path, change: dict, match: str) -> None:
    _, out = _export(tmp_path, "resnet18")
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    manifest.update(change)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match=match):
        load_export(out)


def test_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="not an Ocellus export"):
        load_export(tmp_path)
    _, out = _export(tmp_path, "resnet18")
    (out / WEIGHTS_FILE).unlink()
    with pytest.raises(ExportError, match="not found"):
        load_export(out)


def test_predictor_from_export(tmp_path: Path) -> None:
    _, out = _export(tmp_path, "resnet18")
    predictor = load_predictor(out)
    assert isinstance(predictor, ClassificationPredictor)
    image = torch.randint(0, 256, (3, 90, 120), dtype=torch.uint8)
    (result,) = predictor.predict([image], top_k=2)
    assert len(result) == 2 and result[0].score >= result[1].score
    assert abs(sum(c.score for c in predictor.predict([image], top_k=3)[0]) - 1) < 1e-5


def test_an_input_size_the_backbone_cannot_take_is_refused_at_load(tmp_path: Path) -> None:
    # Inputs are resized to the manifest's size, so the export is at fault, not a request.
    make_classifier_export(tmp_path / "export", "alexnet", size=32)
    with pytest.raises(ExportError, match="resizes inputs to 32 px, but alexnet needs "
                                          "inputs of at least 63 px"):
        load_export(tmp_path / "export")
