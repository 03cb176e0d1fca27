"""The backbone catalog: ``create_backbone("resnet50", weights="imagenet")``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from models.backbones.base import STAGE_NAMES, Backbone

# What ``weights`` may be: "imagenet" (the pretrained weights), None (random
# initialisation) or a path to a local state-dict file.
Weights = str | Path | None


@dataclass(frozen=True)
class _Entry:
    build: Callable[..., Backbone]
    # Where the pretrained weights are read from, found without fetching anything;
    # raises WeightsUnavailableError where no such place exists (a package not installed).
    weights_file: Callable[[], Path]


_CATALOG: dict[str, _Entry] = {}

# The modules whose import adds their builders, in the order of the course.
_MODULES = ("classic", "resnet", "inception", "densenet", "mobile", "efficientnet_lite",
            "convnext", "vit")


def add_backbone(name: str, *, weights_file: Callable[[], Path]
                 ) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Add a builder ``fn(*, weights) -> Backbone`` under `name`.

    Args:
        name: The catalog name.
        weights_file: Returns the file its ImageNet weights are read from (the torch
            hub cache's, a package's), without downloading.
    """

    def wrap(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
        _CATALOG[name] = _Entry(fn, weights_file)
        return fn

    return wrap


def _ensure_builtin() -> None:
    # Importing the modules adds their builders; done lazily so that
    # importing the catalog does no work.
    import importlib

    for module in _MODULES:
        importlib.import_module(f"models.backbones.{module}")


def list_backbones() -> list[str]:
    """Names accepted by `create_backbone`, sorted."""
    _ensure_builtin()
    return sorted(_CATALOG)


def _entry(name: str) -> _Entry:
    _ensure_builtin()
    if name not in _CATALOG:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(_CATALOG)}")
    return _CATALOG[name]


def create_backbone(name: str, *, weights: Weights = "imagenet") -> Backbone:
    """Build a backbone from the catalog.

    Args:
        name: One of `list_backbones()`.
        weights: ``"imagenet"`` for the pretrained weights, ``None`` or
            ``"none"`` for random initialisation, or a path to a state dict.

    Raises:
        ValueError: The name is not in the catalog.
        WeightsUnavailableError: Pretrained weights cannot be found or fetched.
    """
    entry = _entry(name)
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    return entry.build(weights=weights)


def pretrained_weights_file(name: str) -> Path:
    """The file `name`'s ImageNet weights are read from; it may not exist yet.

    Raises:
        ValueError: The name is not in the catalog.
        WeightsUnavailableError: There is no such file to look for (its package is
            not installed).
    """
    return _entry(name).weights_file()


def uniform_trainable_stages(name: str, trainable_stages: int,
                             frozen_stages: Iterable[str] = ()) -> int:
    """An export's recorded ``trainable_stages`` in the uniform stages of today.

    Exports made before the stages were uniform counted a backbone's own stages
    (efficientnet_lite0 had nine). Their manifests show it: a count above
    ``len(STAGE_NAMES)``, or ``frozen_stages`` that are not uniform names. Such a
    count is translated by `Backbone.trainable_stages_from_legacy`; any other
    passes unchanged.

    Args:
        name: The backbone.
        trainable_stages: The count the export's training recorded (``training.args``).
        frozen_stages: The stages it recorded as frozen (``training.frozen_stages``).
    """
    if trainable_stages <= len(STAGE_NAMES) and set(frozen_stages) <= set(STAGE_NAMES):
        return trainable_stages
    with torch.device("meta"):  # only its stage layout is read: no memory, no initialisation
        backbone = create_backbone(name, weights=None)
    return backbone.trainable_stages_from_legacy(trainable_stages)
