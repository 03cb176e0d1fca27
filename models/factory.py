"""Architectures an export's manifest can name, each rebuilt from JSON-able args.

A manifest says ``{"architecture": {"name": "classifier", "args": {...}}}``;
`build_model` turns that into an ``nn.Module`` with no other input. Builders are
imported lazily so that importing this module does no work.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from models.errors import ExportError

# architecture name → "module:callable"
ARCHITECTURES: dict[str, str] = {
    "classifier": "models.classification.classifier:ImageClassifier",
    "detector": "models.detection.detector:Detector",
    "nanodet": "models.detection.nanodet:NanoDet",
}


def build_model(architecture: dict[str, Any]) -> nn.Module:
    """Rebuild an untrained model from a manifest's ``architecture`` entry."""
    name = architecture.get("name")
    if name not in ARCHITECTURES:
        raise ExportError(
            f"unknown architecture {name!r} in manifest; expected one of {sorted(ARCHITECTURES)}"
        )
    module_name, attr = ARCHITECTURES[name].split(":")
    builder = getattr(importlib.import_module(module_name), attr)
    args = dict(architecture.get("args", {}))
    # Weights come from the export, never from a download at load time.
    if "backbone_weights" in args:
        args["backbone_weights"] = None
    try:
        return builder(**args)
    except (TypeError, ValueError) as exc:
        raise ExportError(f"cannot build architecture {name!r} from args {args}: {exc}") from exc
