"""Helpers that test modules import (``from helpers import ...``; pytest's ``pythonpath``
puts tests/ on the path). Fixtures live in conftest.py."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

# Server settings for tests that are not about the backend or batch sizes: eager, no
# measuring at start-up (which takes seconds per model).
QUICK_START = {"OCELLUS_BACKEND": "eager", "OCELLUS_TUNE_BATCH_SIZE": "false"}


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: int = 48) -> bytes:
    """A small solid-colour PNG with a little noise."""
    rng = np.random.default_rng(0)
    pixels = np.clip(np.array(color) + rng.integers(-20, 20, (size, size, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


TINY_LABELS = ["red", "green", "blue"]


def make_tiny_export(out: Path, *, seed: int = 0, name: str = "tiny") -> Path:
    """An untrained efficientnet_lite0 classifier of 3 classes at 64 px: quick to load."""
    import torch

    from models.classification.classifier import ImageClassifier
    from models.export import Manifest, save_export

    torch.manual_seed(seed)
    model = ImageClassifier("efficientnet_lite0", len(TINY_LABELS), backbone_weights=None)
    pre = model.backbone.preprocessing.with_size(64)
    manifest = Manifest(
        task="classify", name=name, labels=list(TINY_LABELS), preprocessing=pre.to_dict(),
        architecture={"name": "classifier", "args": {
            "backbone": "efficientnet_lite0", "num_classes": len(TINY_LABELS), "dropout": 0.2}})
    save_export(model, out, manifest)
    return out


def promql_metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads: the service's own (``ocellus_...``) and
    recorded ones (``level:metric:operations``, from deploy/prometheus/alerts.yml).

    Quoted strings (label values such as route templates) are left out.
    """
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'", '""', expr)
    return {name for name in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", unquoted)
            if name.startswith("ocellus_") or ":" in name}
