"""The models a running service holds, by name, each with its own inference thread."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from models.errors import ModelNotReadyError, TaskMismatchError
from models.predictor import Predictor

log = logging.getLogger(__name__)

_ROUTE_OF_TASK = {"classify": "/v1/classify", "detect": "/v1/detect"}


@dataclass
class ServedModel:
    """A loaded predictor and the single thread its forward passes run on.

    Models are not assumed thread-safe, so every forward of one model runs on
    its own one-thread executor, off the event loop.
    """

    name: str
    path: Path
    predictor: Predictor
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(
        timespec="seconds"))
    executor: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"infer-{self.name}")

    @property
    def manifest(self):
        return self.predictor.manifest

    @property
    def task(self) -> str:
        return self.manifest.task

    def _run(self, inputs: list[torch.Tensor], metas: list[Any], options: dict) -> list[Any]:
        outputs = self.predictor.forward(torch.stack(inputs))
        return self.predictor.postprocess(outputs, metas, **options)

    async def infer(self, inputs: list[torch.Tensor], metas: list[Any], **options: Any
                    ) -> list[Any]:
        """Preprocessed inputs of one request → one result per image."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._run, inputs, metas, options)

    def warm_up(self) -> None:
        """One forward at the input size, so the first request is not the slow one."""
        size = self.predictor.input_size
        self.predictor.forward(torch.zeros(1, 3, size, size))

    def close(self) -> None:
        self.executor.shutdown(wait=True)


class ModelStore:
    """Loaded models by name; `get` picks one for a task and explains refusals."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.models: dict[str, ServedModel] = {}

    @property
    def ready(self) -> bool:
        return bool(self.models)

    def load(self, path: Path) -> ServedModel:
        """Load, verify and warm up an export; it replaces a model of the same name."""
        predictor = Predictor.from_export(path, device=self.device)
        served = ServedModel(predictor.manifest.name, Path(path), predictor)
        served.warm_up()
        old = self.models.get(served.name)
        self.models[served.name] = served
        if old is not None:
            old.close()
        log.info("loaded %s (task %s, version %s) from %s", served.name, served.task,
                 predictor.manifest.version, path)
        return served

    def get(self, name: str | None, task: str) -> ServedModel:
        """The model called `name`, or the first one of `task` when no name is given.

        Raises:
            ModelNotReadyError: No such model, or none for the task.
            TaskMismatchError: The named model does another task.
        """
        if name is not None:
            if name not in self.models:
                raise ModelNotReadyError(
                    f"no model named {name!r}; loaded models: {sorted(self.models)}")
            served = self.models[name]
            if served.task != task:
                raise TaskMismatchError(
                    f"model {name!r} is a {served.task!r} model and cannot {task}; "
                    f"send it to {_ROUTE_OF_TASK[served.task]}")
            return served
        for served in self.models.values():
            if served.task == task:
                return served
        others = {m.name: m.task for m in self.models.values()}
        raise ModelNotReadyError(f"no {task!r} model is loaded; loaded models: {others}")

    def close(self) -> None:
        for served in self.models.values():
            served.close()
        self.models.clear()
