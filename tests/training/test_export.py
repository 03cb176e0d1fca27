"""The one training-export path: manifests with the same keys for every task, one
fingerprint, one way to start from an export."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from models.classification.classifier import ImageClassifier
from models.detection import Detector
from models.errors import ExportError
from models.export import load_export
from training.export import dataset_fingerprint, init_from_export


def test_fingerprint_covers_names_paths_and_bytes_but_not_where_the_set_lives(
        tmp_path: Path) -> None:
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    image, label = root / "images" / "a.jpg", root / "images" / "a.txt"
    image.write_bytes(b"pixels")
    label.write_text("0 0.5 0.5 0.1 0.1\n")
    splits = {"train": [(image, label)], "val": []}
    base = dataset_fingerprint(["cat"], root, splits)
    assert len(base) == 64 and dataset_fingerprint(["cat"], root, splits) == base
    assert dataset_fingerprint(["dog"], root, splits) != base
    label.write_text("0 0.5 0.5 0.2 0.1\n")
    assert dataset_fingerprint(["cat"], root, splits) != base
    label.write_text("0 0.5 0.5 0.1 0.1\n")
    assert dataset_fingerprint(["cat"], root, {"train": [], "val": [(image, label)]}) != base
    # A missing label file (no objects) is a value too, not an error.
    assert dataset_fingerprint(["cat"], root, {"train": [(image, root / "none.txt")]}) != base
    moved = shutil.copytree(root, tmp_path / "elsewhere")
    assert dataset_fingerprint(["cat"], moved, {"train": [(moved / "images" / "a.jpg",
                                                           moved / "images" / "a.txt")],
                                                "val": []}) == base


def test_both_tasks_write_manifests_with_the_same_keys(tiny_classifier, tiny_detector) -> None:
    (c_out, classifier), (d_out, detector) = tiny_classifier, tiny_detector
    for section in ("dataset", "training", "provenance"):
        assert set(getattr(classifier, section)) == set(getattr(detector, section)), section
    assert set(classifier.to_dict()) == set(detector.to_dict())
    # The classifier's split is drawn from one tree; the detector's val images have a folder.
    assert classifier.dataset["val_dir"] is None
    assert Path(detector.dataset["val_dir"]).name == "val"
    for out, manifest in ((c_out, classifier), (d_out, detector)):
        assert manifest.dataset["num_val"] > 0 and len(manifest.dataset["fingerprint"]) == 64
        assert manifest.provenance["command"] == f"ocellus train {manifest.task}"
        assert manifest.provenance["checkpoint"] == str(out / "checkpoints" / "best.pt")
        assert manifest.training["best_epoch"] == 0 and len(manifest.training["history"]) == 1
        # What the metric names, every task's history records per epoch.
        assert {"epoch", "steps", "train_loss", "lr", "minutes"} <= set(
            manifest.training["history"][0])


@pytest.mark.parametrize("task", ["classify", "detect"])
def test_init_from_export_keeps_class_outputs_only_for_the_same_labels(
        task: str, tiny_classifier, tiny_detector) -> None:
    out, manifest = tiny_classifier if task == "classify" else tiny_detector
    source, _ = load_export(out)
    architecture = manifest.architecture
    args = architecture["args"]
    prefix = "head." if task == "classify" else "cls_head."

    def fresh() -> torch.nn.Module:
        torch.manual_seed(1)
        if task == "classify":
            return ImageClassifier(args["backbone"], args["num_classes"], dropout=args["dropout"])
        return Detector(**args)

    model = fresh()
    init_from_export(model, out, architecture, manifest.labels, class_tensors=prefix)
    for k, v in model.state_dict().items():
        assert torch.equal(v, source.state_dict()[k]), k

    model, untouched = fresh(), fresh().state_dict()
    init_from_export(model, out, architecture, list(reversed(manifest.labels)),
                     class_tensors=prefix)
    for k, v in model.state_dict().items():
        expected = untouched[k] if k.startswith(prefix) else source.state_dict()[k]
        assert torch.equal(v, expected), k

    other = {**architecture, "args": {**args, "backbone": "efficientnet_lite0"}}
    with pytest.raises(ExportError, match="efficientnet_lite0"):
        init_from_export(fresh(), out, other, manifest.labels, class_tensors=prefix)
