"""``ocellus evaluate``: one command for every task, dispatched through the task table."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from cli.main import main as ocellus
from models.tasks import TASKS, resolve


def test_every_task_evaluates_through_one_signature() -> None:
    shapes = {name: list(inspect.signature(resolve(task.evaluate)).parameters)[:4]
              for name, task in TASKS.items()}
    assert all(params == ["predictor", "data", "split", "batch_size"]
               for params in shapes.values()), shapes


@pytest.mark.slow  # trains its classifier (the detector is the shared one)
@pytest.mark.parametrize("task", ["classify", "detect"])
def test_evaluate_reproduces_the_manifest_and_writes_the_report(
        task: str, tiny_classifier, tiny_detector, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    export, manifest = tiny_classifier if task == "classify" else tiny_detector
    data = Path(manifest.dataset["data"])
    assert ocellus(["evaluate", "--model", str(export), "--data", str(data),
                    "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    summary = json.loads(capsys.readouterr().out)
    metric = TASKS[task].metric
    assert summary[metric] == report[metric]
    assert report["model"]["path"] == str(export)
    assert (tmp_path / "training_curves.png").is_file()
    assert (tmp_path / "confusion_matrix.png").is_file() == (task == "classify")
    if task == "detect":  # the classifier's val split is drawn: its tree holds train images too
        assert report[metric] == pytest.approx(manifest.metrics["val"][metric], abs=1e-6)
