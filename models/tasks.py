"""The task table: for each task, where its predictor, route, metric and training live.

As in Ultralytics' ``task_map``, everything that differs between tasks is named
here once, and the rest of Ocellus looks it up instead of branching on the
task's name. Callables are lazy ``"module:attr"`` strings (modules are plain
``"module"``), as in `models.factory.ARCHITECTURES`: importing this table
imports nothing, so `models/` names training and service entry points without
depending on them. Adding a task (segmentation one day) means one entry here
plus its own modules.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from models.errors import TaskMismatchError


@dataclass(frozen=True)
class Task:
    """One task's entry points.

    Attributes:
        name: The manifest's ``task``.
        predictor: The `Predictor` subclass that serves and evaluates it.
        route: The ``/v1`` route that serves it.
        metric: The headline score: in a manifest's ``metrics``, in ``ocellus
            evaluate``'s summary, and what ``ocellus retrain`` compares.
        train: Module of ``ocellus train <name>`` (``get_args_parser``, ``main``,
            ``train_one_epoch``, ``evaluate``); ``ocellus retrain`` calls its
            ``main`` too.
        evaluate: ``fn(predictor, data, *, split, batch_size) -> report`` of
            ``ocellus evaluate`` (``split`` None: the data's own validation split).
        retrain: Module of the task's side of ``ocellus retrain`` (``eval_set``,
            ``score``).
    """

    name: str
    predictor: str
    route: str
    metric: str
    train: str
    evaluate: str
    retrain: str


TASKS: dict[str, Task] = {
    "classify": Task(
        name="classify",
        predictor="models.classification.predictor:ClassificationPredictor",
        route="/v1/classify",
        metric="top1",
        train="training.classify.train",
        evaluate="training.classify.evaluate:evaluate_data",
        retrain="training.classify.retrain",
    ),
    "detect": Task(
        name="detect",
        predictor="models.detection.predictor:DetectionPredictor",
        route="/v1/detect",
        metric="map50_95",
        train="training.detection.train",
        evaluate="training.detection.evaluate:evaluate_data",
        retrain="training.detection.retrain",
    ),
}


def get_task(name: str) -> Task:
    """The table's entry for `name`.

    Raises:
        TaskMismatchError: Not a task this Ocellus knows.
    """
    if name not in TASKS:
        raise TaskMismatchError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name]


def resolve(ref: str) -> Any:
    """Import a ``"module:attr"`` reference (or a plain ``"module"``) and return it."""
    module_name, _, attr = ref.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module
