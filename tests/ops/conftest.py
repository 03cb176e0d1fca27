"""Fixtures of the operations tests: tiny classifier exports and a registry of them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

LABELS = ["red", "green", "blue"]


def make_tiny_export(out: Path, *, seed: int = 0, name: str = "tiny") -> Path:
    """An untrained efficientnet_lite0 classifier of 3 classes at 64 px: quick to load."""
    import torch

    from models.classification.classifier import ImageClassifier
    from models.export import Manifest, save_export

    torch.manual_seed(seed)
    model = ImageClassifier("efficientnet_lite0", len(LABELS), backbone_weights=None)
    pre = model.backbone.preprocessing.with_size(64)
    manifest = Manifest(
        task="classify", name=name, labels=list(LABELS), preprocessing=pre.to_dict(),
        architecture={"name": "classifier", "args": {
            "backbone": "efficientnet_lite0", "num_classes": len(LABELS), "dropout": 0.2}})
    save_export(model, out, manifest)
    return out


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny exports with different weights."""
    root = tmp_path_factory.mktemp("tiny-exports")
    return [make_tiny_export(root / f"seed{s}", seed=s) for s in (0, 1)]


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: int = 48) -> bytes:
    """A small solid-colour PNG with a little noise."""
    rng = np.random.default_rng(0)
    pixels = np.clip(np.array(color) + rng.integers(-20, 20, (size, size, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()
