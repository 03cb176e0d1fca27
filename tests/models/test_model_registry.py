"""The on-disk model registry: versions, atomic pointer, rollback, lock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.classification.classifier import ImageClassifier
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


_PROMOTE_THEN_DIE = """
import os, signal, sys
from models.registry import ModelRegistry

real_replace = os.replace

def replace_then_die(src, dst):  # the process dies right after its first committed write
    real_replace(src, dst)
    os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace_then_die
ModelRegistry(sys.argv[1]).promote("m", sys.argv[2])
"""


@pytest.mark.slow  # SIGKILLs promote subprocesses between their writes: ~4 s
def test_a_promote_killed_between_its_writes_rolls_back_correctly(
        tmp_path: Path, export: Path) -> None:
    """``current`` is the commit point: whatever the kill left, rollback is right."""
    import signal
    import subprocess
    import sys

    reg = ModelRegistry(tmp_path)
    for version in ("1", "2", "3"):
        reg.publish("m", export, version=version)
    reg.promote("m", "1")
    reg.promote("m", "2")
    proc = subprocess.run([sys.executable, "-c", _PROMOTE_THEN_DIE, str(tmp_path), "3"],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert reg.current("m") == "3"  # committed; only its history entry is missing
    assert [e["version"] for e in reg.history("m")] == ["1", "2"]
    assert reg.rollback("m") == "2" and reg.rollback("m") == "1"


def test_history_past_current_is_ignored(tmp_path: Path, export: Path) -> None:
    """A history entry whose ``current`` write never happened (the old promote order)."""
    reg = ModelRegistry(tmp_path)
    for version in ("1", "2", "3"):
        reg.publish("m", export, version=version)
    reg.promote("m", "1")
    reg.promote("m", "2")
    history = tmp_path / "m" / "history.json"
    events = json.loads(history.read_text())
    history.write_text(json.dumps([*events, {**events[-1], "version": "3"}]))
    assert reg.current("m") == "2"
    assert reg.rollback("m") == "1"  # not the half-promoted 3
