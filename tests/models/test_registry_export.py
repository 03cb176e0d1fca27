"""Every registered backbone builds, runs and exports; exports round-trip and refuse tampering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.backbones import create_backbone, list_backbones
from models.classification.classifier import ImageClassifier
from models.classification.predictor import ClassificationPredictor
from models.errors import ExportError, WeightsUnavailableError
from models.export import MANIFEST_FILE, WEIGHTS_FILE, Manifest, load_export, save_export
from models.predictor import load_predictor


def _export(tmp_path: Path, backbone: str, num_classes: int = 3) -> tuple[ImageClassifier, Path]:
    torch.manual_seed(0)
    model = ImageClassifier(backbone, num_classes).eval()
    manifest = Manifest(
        task="classify",
        architecture={"name": "classifier", "args": {"backbone": backbone,
                                                     "num_classes": num_classes}},
        labels=[f"c{i}" for i in range(num_classes)],
        preprocessing=model.backbone.preprocessing.with_size(64).to_dict(),
        dataset={"fingerprint": "test"},
    )
    out = tmp_path / backbone
    save_export(model, out, manifest)
    return model, out


@pytest.mark.parametrize("name", list_backbones())
def test_backbone_builds_runs_and_exports(name: str, tmp_path: Path) -> None:
    backbone = create_backbone(name, weights=None)
    x = torch.randn(2, 3, 64, 64)
    pyramid = backbone.forward_pyramid(x)
    assert [p.shape[1] for p in pyramid] == list(backbone.pyramid_channels)
    assert [p.shape[-1] for p in pyramid] == [8, 4, 2]  # strides 8, 16, 32
    assert backbone(x).shape == (2, backbone.num_features)
    assert backbone.stage_names and backbone.preprocessing.crop_size > 0

    model, out = _export(tmp_path, name)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    for key in ("task", "architecture", "labels", "preprocessing", "metrics", "dataset",
                "created_at", "weights_sha256"):
        assert key in manifest
    loaded, m = load_export(out)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
    assert m.labels == ["c0", "c1", "c2"]


def test_freeze_by_stage_name() -> None:
    backbone = create_backbone("resnet18", weights=None)
    backbone.freeze(2)
    assert backbone.frozen_stages == ("stem", "layer1", "layer2")
    assert not any(p.requires_grad for p in backbone.layer2.parameters())
    assert all(p.requires_grad for p in backbone.layer3.parameters())
    backbone.train()
    assert not backbone.layer1.training and backbone.layer4.training
    with pytest.raises(ValueError, match="between 0 and 5"):
        backbone.freeze(9)


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


def test_offline_resnet_weights_name_the_file(tmp_path: Path) -> None:
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with pytest.raises(WeightsUnavailableError) as info:
            create_backbone("resnet50")
    finally:
        torch.hub.set_dir(old)
    message = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in message
    assert "--weights PATH" in message
