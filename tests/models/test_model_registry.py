"""The on-disk model registry: versions, atomic pointer, rollback, lock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.classifier import ImageClassifier
from models.errors import ExportError, RegistryError, RegistryLockedError
from models.export import MANIFEST_FILE, WEIGHTS_FILE, Manifest, save_export
from models.registry import ModelRegistry


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = ImageClassifier("resnet18", 2, backbone_weights=None)
    out = tmp_path_factory.mktemp("export") / "e"
    save_export(model, out, Manifest(
        task="classify", labels=["a", "b"], name="anything",
        preprocessing=model.backbone.preprocessing.with_size(32).to_dict(),
        architecture={"name": "classifier", "args": {"backbone": "resnet18",
                                                      "num_classes": 2}}))
    (out / "checkpoints").mkdir()
    return out


def test_publish_promote_rollback(tmp_path: Path, export: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    assert reg.names() == [] and reg.current("m") is None
    v1, v2, v3 = (reg.publish("m", export) for _ in range(3))
    assert (v1, v2, v3) == ("1", "2", "3") and reg.versions("m") == ["1", "2", "3"]
    assert sorted(p.name for p in reg.path("m", v1).iterdir()) == [MANIFEST_FILE, WEIGHTS_FILE]
    manifest = reg.verify("m", v2)
    assert (manifest.name, manifest.version) == ("m", "2")
    reg.promote("m", v1)
    reg.promote("m", v3)
    assert reg.names() == ["m"] and reg.current("m") == "3"
    assert (tmp_path / "reg" / "m" / "current").read_text() == "3\n"
    assert reg.rollback("m") == "1" and reg.current("m") == "1"
    with pytest.raises(RegistryError, match="roll back"):
        reg.rollback("m")
    assert [e["action"] for e in reg.history("m")] == ["promote", "promote", "rollback"]
    # No temp files are left beside the versions.
    assert sorted(p.name for p in (tmp_path / "reg" / "m").iterdir()
                  if not p.name.startswith(".")) == ["1", "2", "3", "current", "history.json"]
    assert not [p for p in (tmp_path / "reg" / "m").iterdir() if p.name.endswith(".tmp")]


def test_bad_versions_are_refused_and_skipped(tmp_path: Path, export: Path) -> None:
    reg = ModelRegistry(tmp_path)
    good, bad = reg.publish("m", export), reg.publish("m", export)
    weights = reg.path("m", bad) / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ExportError, match="sha256"):
        reg.promote("m", bad)
    reg.promote("m", good)
    reg.promote("m", bad, verify=False)  # e.g. corrupted after promotion
    v3 = reg.publish("m", export)
    reg.promote("m", v3)
    assert reg.rollback("m") == good  # skips the corrupt one
    manifest = json.loads((reg.path("m", v3) / MANIFEST_FILE).read_text())
    assert manifest["provenance"]["registry_source"] == str(export.resolve())


def test_names_are_checked_and_locks_exclusive(tmp_path: Path, export: Path) -> None:
    reg = ModelRegistry(tmp_path)
    for bad in ("../x", ".hidden", "a/b", ""):
        with pytest.raises(RegistryError):
            reg.publish(bad, export)
    with reg.lock("m"), pytest.raises(RegistryLockedError), reg.lock("m"):
        pass
    with reg.lock("m"):  # released
        pass
    with pytest.raises(RegistryError, match="immutable"):
        reg.publish("m", export, version=reg.publish("m", export))
