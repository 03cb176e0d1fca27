"""``ocellus retrain`` on a detector: mAP50-95 decides, per-class recall guards.

The champion is the briefly trained `detector_export` (8 epochs on 96 images).
A candidate fine-tuned from it for 3 epochs on 96 new images should beat it on a frozen
evaluation set it never trained on; one fine-tuned for 2 epochs on 48 images
with shuffled class ids should not.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from cli.main import main as ocellus
from models.export import MANIFEST_FILE
from models.registry import ModelRegistry
from training.data.synth_detect import synth_detect
from training.retrain import EXIT_KEPT, EXIT_PROMOTED


def shuffle_classes(data_yaml: Path, num_classes: int, seed: int) -> Path:
    """Give every training box a random class id (val labels are left alone)."""
    rng = random.Random(seed)
    for label in sorted((data_yaml.parent / "labels" / "train").glob("*.txt")):
        rows = [line.split() for line in label.read_text().splitlines() if line.strip()]
        label.write_text("".join(" ".join([str(rng.randrange(num_classes)), *r[1:]]) + "\n"
                                 for r in rows))
    return data_yaml


@pytest.mark.slow
def test_detector_retrain_promotes_on_map_and_keeps_champion_over_shuffled_labels(
        tmp_path: Path, detector_export: tuple[Path, dict]) -> None:
    export, _ = detector_export
    registry = ModelRegistry(tmp_path / "registry")
    registry.promote("garments", registry.publish("garments", export))
    frozen = synth_detect(tmp_path / "eval", images=50, seed=99, img_size=256, val_fraction=0.8)
    common = ["retrain", "--registry", str(tmp_path / "registry"), "--name", "garments",
              "--eval-data", str(frozen)]

    report1 = tmp_path / "good.json"
    good_data = synth_detect(tmp_path / "good", images=120, seed=1, img_size=256)
    code = ocellus([*common, "--data", str(good_data), "--epochs", "3", "--min-gain", "0.02",
                    "--max-class-drop", "0.3", "--report", str(report1)])
    good = json.loads(report1.read_text())
    print(f"clean data: champion mAP50-95 {good['champion']['map50_95']:.3f}, candidate "
          f"{good['candidate']['map50_95']:.3f}, exit {code}")
    assert code == EXIT_PROMOTED, good
    assert good["task"] == "detect" and good["metric"] == "map50_95"
    assert good["eval"]["num_images"] == 40
    assert good["candidate"]["map50_95"] >= good["champion"]["map50_95"] + 0.02, good
    assert set(good["candidate"]["per_class"]) == set(good["class_floors"])
    assert registry.current("garments") == "2"
    assert registry.verify("garments", "2").provenance["retrained_from"] == "1"

    report2 = tmp_path / "shuffled.json"
    names = registry.verify("garments", "2").labels
    bad_data = shuffle_classes(synth_detect(tmp_path / "shuffled", images=60, seed=2,
                                            img_size=256), len(names), seed=2)
    code = ocellus([*common, "--data", str(bad_data), "--epochs", "2",
                    "--report", str(report2)])
    bad = json.loads(report2.read_text())
    print(f"shuffled ids: champion mAP50-95 {bad['champion']['map50_95']:.3f}, candidate "
          f"{bad['candidate']['map50_95']:.3f}, exit {code}, reasons {bad['reasons']}")
    assert code == EXIT_KEPT, bad
    assert bad["champion"]["version"] == "2"
    assert bad["candidate"]["map50_95"] < bad["champion"]["map50_95"], bad
    assert not bad["promote"] and bad["reasons"] and bad["promoted_version"] is None
    assert registry.current("garments") == "2"
    assert registry.versions("garments") == ["1", "2"]


@pytest.mark.slow
def test_an_int8_detector_champion_is_met_by_an_int8_candidate_under_its_gate(
        tmp_path: Path, detector_int8_export: Path) -> None:
    """A detector served at int8: the candidate is quantized under the champion's recorded
    gate, scored at int8 on mAP50-95, and published as int8."""
    champion = tmp_path / "garments-int8"
    shutil.copytree(detector_int8_export, champion)
    # A gate that a one-epoch candidate's quantization passes whatever its small val split
    # does to a class's recall: the point is which gate is used and what is published.
    # Its values are neither `ocellus quantize`'s defaults nor the job's --max-class-drop.
    manifest = json.loads((champion / MANIFEST_FILE).read_text())
    manifest["quantization"]["gate"] = {"max_drop": 1.0, "max_class_drop": 0.99}
    (champion / MANIFEST_FILE).write_text(json.dumps(manifest))
    registry = ModelRegistry(tmp_path / "registry")
    registry.promote("garments", registry.publish("garments", champion))
    report_file = tmp_path / "report.json"
    code = ocellus(["retrain", "--registry", str(tmp_path / "registry"), "--name", "garments",
                    "--data", str(synth_detect(tmp_path / "new", images=48, seed=4,
                                               img_size=256)),
                    "--epochs", "1", "--min-gain", "-1", "--max-class-drop", "1",
                    "--report", str(report_file)])
    report = json.loads(report_file.read_text())
    assert code == EXIT_PROMOTED, report
    assert report["metric"] == "map50_95"
    assert report["champion"]["precision"] == report["candidate"]["precision"] == "int8"
    quantization = report["candidate_quantization"]
    assert quantization["accepted"] and quantization["reasons"] == []
    assert quantization["gate"] == {"max_drop": 1.0, "max_class_drop": 0.99}  # the champion's
    assert set(quantization["drop"]) == {"map50_95", "max_class_recall"}  # a detector's gate
    promoted = registry.verify("garments", "2")
    assert promoted.task == "detect" and promoted.precision == "int8"
    assert promoted.quantization["drop"] == quantization["drop"]
    assert report["candidate"]["map50_95"] > 0
    assert promoted.quantization["evaluation"]["int8"]["map50_95"] == pytest.approx(
        report["candidate"]["map50_95"])  # what was scored is what is published
    assert registry.current("garments") == "2"


def test_retrain_refuses_a_detector_it_cannot_train(tmp_path: Path, nanodet_source_files,
                                                     capsys: pytest.CaptureFixture) -> None:
    json_file, bin_file = nanodet_source_files
    nanodet = tmp_path / "coco-nanodet"
    assert ocellus(["import", "nanodet", "--json", str(json_file), "--bin", str(bin_file),
                    "--out", str(nanodet)]) == 0
    registry = ModelRegistry(tmp_path / "registry")
    registry.promote("coco", registry.publish("coco", nanodet))
    data = synth_detect(tmp_path / "d", images=10, seed=0, img_size=128)
    code = ocellus(["retrain", "--registry", str(tmp_path / "registry"), "--name", "coco",
                    "--data", str(data)])
    assert code == 2
    assert "cannot fine-tune" in capsys.readouterr().err
    assert registry.versions("coco") == ["1"]
