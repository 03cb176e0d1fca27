"""Classification training end to end: fit, export, resume, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main as ocellus
from models.export import read_manifest
from models.predictor import load_predictor
from training.classify.data import load_splits
from training.classify.train import get_args_parser, main


def test_split_is_stratified_and_seeded(tmp_path: Path, make_shapes_tree) -> None:
    data = make_shapes_tree(tmp_path / "data", per_class=10)
    a = load_splits(data, val_fraction=0.2, seed=1)
    b = load_splits(data, val_fraction=0.2, seed=1)
    assert a.val == b.val and len(a.val) == 6 and len(a.train) == 24
    assert sorted({t for _, t in a.val}) == [0, 1, 2]
    assert not {p for p, _ in a.val} & {p for p, _ in a.train}


@pytest.mark.slow  # trains
def test_train_export_resume_evaluate(tmp_path: Path, make_shapes_tree) -> None:
    data = make_shapes_tree(tmp_path / "data")
    out = tmp_path / "export"
    base = ["--data", str(data), "--out", str(out), "--backbone", "resnet18", "--weights",
            "none", "--mode", "fine-tune", "--trainable-stages", "5", "--img-size", "48",
            "--batch-size", "8", "--lr", "3e-3", "--backbone-lr-scale", "1", "--patience", "9"]
    first = main(get_args_parser().parse_args([*base, "--epochs", "2"]))
    assert [h["epoch"] for h in first.training["history"]] == [0, 1]

    # Resume from the last checkpoint to 4 epochs: the history continues, it does not restart.
    resumed = main(get_args_parser().parse_args(
        [*base, "--epochs", "4", "--resume", str(out / "checkpoints" / "last.pt")]))
    assert [h["epoch"] for h in resumed.training["history"]] == [0, 1, 2, 3]
    assert resumed.training["history"][:2] == first.training["history"]

    manifest = read_manifest(out)
    assert manifest.task == "classify"
    assert manifest.labels == ["blue_stripes", "green_disc", "red_square"]
    assert manifest.preprocessing["crop_size"] == 48
    assert len(manifest.dataset["fingerprint"]) == 64
    assert (manifest.weights_sha256, manifest.metrics) == (resumed.weights_sha256, resumed.metrics)
    assert resumed.metrics["val"]["top1"] > 0.5  # three easy classes, chance is 1/3

    # The export alone reproduces the recorded validation top-1 through the Predictor.
    assert ocellus(["evaluate", "--model", str(out), "--data", str(data)]) == 0
    report = json.loads((out / "evaluation" / "report.json").read_text())
    assert set(report["per_class"]) == set(manifest.labels)
    assert sum(map(sum, report["confusion_matrix"])) == report["num_images"] == 36
    for png in ("confusion_matrix.png", "training_curves.png"):
        assert (out / "evaluation" / png).read_bytes()[:4] == b"\x89PNG"
    assert load_predictor(out).labels == manifest.labels


@pytest.mark.slow
def test_real_transfer_learning_on_fashion_mnist(fashion_model, fashion_mnist_tree) -> None:
    """efficientnet_lite0 feature extraction, 100 images per class → ≥ 75% on 500 held out."""
    export, written = fashion_model
    manifest = read_manifest(export)
    assert manifest.training["args"]["mode"] == "feature-extract"
    from models.backbones.efficientnet_lite import EfficientNetLiteBackbone

    assert manifest.training["frozen_stages"] == list(EfficientNetLiteBackbone.stage_names)
    assert manifest.dataset["num_train"] == 1000 and manifest.dataset["num_val"] == 500
    # Re-evaluate from the export alone, through the served Predictor.
    from training.classify.evaluate import evaluate_data

    report = evaluate_data(load_predictor(export), fashion_mnist_tree, batch_size=100)
    assert report["num_images"] == 500
    assert report["top1"] >= 0.75, report["top1"]
    assert abs(report["top1"] - written.metrics["val"]["top1"]) < 1e-9


class _RunsOnLoad:
    """Unpickling this creates a file: what a hostile checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_resume_loads_checkpoints_as_data_only(tmp_path: Path, make_shapes_tree) -> None:
    """--resume uses torch.load(weights_only=True): a checkpoint cannot run code."""
    import pickle

    import torch

    data = make_shapes_tree(tmp_path / "data", per_class=4)
    marker = tmp_path / "ran"
    torch.save({"model": {}, "epoch": 0, "payload": _RunsOnLoad(marker)}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        main(get_args_parser().parse_args([
            "--data", str(data), "--out", str(tmp_path / "out"), "--backbone", "resnet18",
            "--weights", "none", "--img-size", "32", "--resume", str(tmp_path / "evil.pt")]))
    assert not marker.exists()
