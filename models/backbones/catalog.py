"""The backbone catalog: ``create_backbone("resnet50", weights="imagenet")``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from models.backbones.base import Backbone

# What ``weights`` may be: "imagenet" (the pretrained weights), None (random
# initialisation) or a path to a local state-dict file.
Weights = str | Path | None

_CATALOG: dict[str, Callable[..., Backbone]] = {}


def add_backbone(name: str) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Add a builder ``fn(*, weights) -> Backbone`` under `name`."""

    def wrap(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
        _CATALOG[name] = fn
        return fn

    return wrap


def _ensure_builtin() -> None:
    # Importing the modules adds their builders; done lazily so that
    # importing the catalog does no work.
    from models.backbones import efficientnet_lite, resnet  # noqa: F401


def list_backbones() -> list[str]:
    """Names accepted by `create_backbone`, sorted."""
    _ensure_builtin()
    return sorted(_CATALOG)


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
    _ensure_builtin()
    if name not in _CATALOG:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(_CATALOG)}")
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    return _CATALOG[name](weights=weights)
