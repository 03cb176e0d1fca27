"""`ocellus train detect` and `ocellus evaluate` end to end, through the console script.

The end-to-end run trains a tiny model from scratch on tiny images: it checks the
plumbing (export, manifest, evaluate, resume), not accuracy, which
`test_detection_train` checks on the shared `detector_export`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main as ocellus_in_process
from models.detection.predictor import DetectionPredictor
from models.predictor import load_predictor
from training.detection.dataset import load_data_yaml
from training.detection.evaluate import evaluate_data

ROOT = Path(__file__).parent.parent.parent
# Measured with the shared `detector_export` (8 epochs, 96 train images, 192 px): val
# mAP50 0.22. The floor only says "clearly trained"; an untrained model scores ~0.
TRAINED_MAP50_FLOOR = 0.12


def ocellus(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory: pytest.TempPathFactory, make_rectangles_yaml) -> Path:
    return make_rectangles_yaml(tmp_path_factory.mktemp("tiny") / "data")


# A tiny model from scratch: what the plumbing needs, nothing to download or load.
TINY = ("--backbone", "resnet18", "--weights", "none", "--width", "16", "--img-size", "64",
        "--batch-size", "4", "--freeze-backbone", "--no-progress")


@pytest.mark.slow
def test_train_export_evaluate_and_resume(tmp_path: Path, tiny_yaml: Path) -> None:
    out = tmp_path / "det"
    ocellus("train", "detect", "--data", tiny_yaml, "--out", out, "--epochs", "2", *TINY,
            "--name", "tiny")
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"best.pt", "last.pt"}

    predictor = load_predictor(out)
    assert isinstance(predictor, DetectionPredictor)
    m = predictor.manifest
    spec = load_data_yaml(tiny_yaml)
    assert (m.task, m.name, m.architecture["name"]) == ("detect", "tiny", "detector")
    assert m.architecture["args"]["img_size"] == 64 and m.labels == spec.names
    assert m.preprocessing["mode"] == "letterbox" and m.preprocessing["crop_size"] == 64
    assert m.dataset["data"] == str(tiny_yaml.resolve())
    assert m.dataset["val_dir"] == str(tiny_yaml.parent / "images" / "val")
    assert m.dataset["num_val"] == len(spec.val)
    assert [h["epoch"] for h in m.training["history"]] == [0, 1]
    assert m.training["frozen_stages"] == list(predictor.model.backbone.stage_names)
    val = m.metrics["val"]
    assert {"map50", "map50_95", "precision", "recall", "per_class_ap"} <= set(val)
    assert val["num_images"] == len(spec.val)

    # evaluate and resume run in process: the console script's plumbing is checked above.
    assert ocellus_in_process(["evaluate", "--model", str(out), "--data", str(tiny_yaml),
                               "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["num_images"] == len(spec.val)
    for key in ("map50", "map50_95", "precision", "recall"):
        assert report[key] == pytest.approx(val[key], abs=1e-6), key
    assert (tmp_path / "eval" / "training_curves.png").is_file()

    # Resume continues from the checkpoint: only the new epoch trains, the history goes on.
    assert ocellus_in_process(["train", "detect", "--data", str(tiny_yaml), "--out", str(out),
                               "--epochs", "3", *TINY, "--resume",
                               str(out / "checkpoints" / "last.pt")]) == 0
    resumed = load_predictor(out).manifest
    assert [h["epoch"] for h in resumed.training["history"]] == [0, 1, 2]
    assert resumed.training["history"][:2] == m.training["history"]


def test_bad_arguments_and_data_fail_clearly(tmp_path: Path, tiny_yaml: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:  # argparse's usage error
        ocellus_in_process(["train", "detect", "--data", str(tiny_yaml), "--out",
                            str(tmp_path / "x"), "--freeze-backbone", "--trainable-stages", "2"])
    assert exited.value.code == 2 and "not allowed with" in capsys.readouterr().err

    bad = tmp_path / "bad"
    (bad / "images" / "train").mkdir(parents=True)
    (bad / "labels" / "train").mkdir(parents=True)
    image = next((tiny_yaml.parent / "images" / "train").glob("*.png"))
    (bad / "images" / "train" / image.name).write_bytes(image.read_bytes())
    label = bad / "labels" / "train" / f"{image.stem}.txt"
    label.write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n")
    (bad / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/train\n"
                                   "names: [a, b]\n")
    assert ocellus_in_process(["train", "detect", "--data", str(bad / "data.yaml"), "--out",
                               str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert f"{label}:2" in err and "out of range" in err
    assert not (tmp_path / "y").exists()


@pytest.mark.slow
def test_predictor_evaluation_equals_the_manifest(detector_export, synth_detect_yaml) -> None:
    export, written = detector_export
    manifest = json.loads((export / "manifest.json").read_text())
    stored = manifest["metrics"]["val"]
    assert stored["map50"] >= TRAINED_MAP50_FLOOR, stored
    assert written.metrics["val"]["map50"] == stored["map50"]
    # The export alone, through the served Predictor, reproduces the recorded figures.
    report = evaluate_data(load_predictor(export), synth_detect_yaml, batch_size=5)
    for key in ("map50", "map50_95", "precision", "recall"):
        assert report[key] == pytest.approx(stored[key], abs=1e-6), key
    assert report["per_class_ap"] == pytest.approx(stored["per_class_ap"], abs=1e-6)
    assert report["num_images"] == stored["num_images"] == manifest["dataset"]["num_val"]


def test_a_backbone_too_coarse_for_the_image_size_fails_clearly(
        tmp_path: Path, tiny_yaml: Path, capsys: pytest.CaptureFixture) -> None:
    # Inception-v3's unpadded layers need 75 px: a 64 px detector is refused as one line.
    assert ocellus_in_process(["train", "detect", "--data", str(tiny_yaml), "--out",
                               str(tmp_path / "x"), "--backbone", "inception_v3",
                               "--weights", "none", "--img-size", "64"]) == 2
    err = capsys.readouterr().err
    assert "error: inception_v3 needs inputs of at least 75 px a side, got 64x64" in err
    assert not (tmp_path / "x").exists()
