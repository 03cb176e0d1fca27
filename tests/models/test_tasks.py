"""The task table: every entry point it names exists, and loading dispatches through it."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

from models.classification.classifier import ImageClassifier
from models.classification.predictor import ClassificationPredictor
from models.errors import ExportError, TaskMismatchError
from models.export import Manifest, save_export
from models.predictor import Predictor, load_predictor
from models.tasks import TASKS, get_task, resolve


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_entry_point_of_a_task_resolves(name: str) -> None:
    task = get_task(name)
    assert task.name == name and task.route.startswith("/v1/")
    predictor = resolve(task.predictor)
    assert issubclass(predictor, Predictor) and predictor.task == name
    train = resolve(task.train)
    for attr in ("get_args_parser", "main", "train_one_epoch", "evaluate"):
        assert callable(getattr(train, attr)), f"{task.train} has no {attr}"
    assert callable(resolve(task.evaluate))
    retrain = resolve(task.retrain)
    for attr in ("eval_set", "score"):
        assert callable(getattr(retrain, attr)), f"{task.retrain} has no {attr}"


def test_the_base_predictor_module_imports_no_subclass() -> None:
    import models.predictor

    imports = re.findall(r"^\s*(?:from|import) (models\.\w+)", inspect.getsource(models.predictor),
                         re.M)
    assert imports and not {"models.classification", "models.detection"} & set(imports)


def test_an_unknown_task_names_the_known_ones() -> None:
    with pytest.raises(TaskMismatchError, match=r"'segment'.*\['classify', 'detect'\]"):
        get_task("segment")
    with pytest.raises(ExportError, match="task must be one of"):
        Manifest.from_dict({"task": "segment", "architecture": {"name": "classifier"},
                            "labels": ["a"], "preprocessing": {}, "weights_sha256": ""})


def test_load_predictor_takes_the_predictor_of_the_manifest_task(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ImageClassifier("resnet18", num_classes=2, backbone_weights=None)
    save_export(model, tmp_path, Manifest(
        task="classify",
        architecture={"name": "classifier", "args": {"backbone": "resnet18", "num_classes": 2}},
        labels=["a", "b"], preprocessing=model.backbone.preprocessing.to_dict()))
    predictor = load_predictor(tmp_path)
    assert type(predictor) is ClassificationPredictor and predictor.labels == ["a", "b"]
