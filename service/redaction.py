"""What /v1/models shows a caller without the admin token: no host paths, no training args.

A manifest records where its model was trained from (``dataset.root``,
``dataset.data_yaml``), where it came from (``provenance``: the registry
source, the checkpoint, the retrain report) and the training command's
arguments. They tell an anonymous caller about the host's file system and
data, so they are shown with the admin token only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

REDACTED = "<redacted>"
# The training command's arguments: data and output paths, among the hyperparameters.
_HIDDEN_TRAINING_KEYS = ("args", "train_args")
# The sections that may hold paths (labels, architecture and preprocessing do not).
_SCRUBBED_SECTIONS = ("dataset", "training", "provenance", "metrics", "quantization")
_WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]")
# An absolute POSIX path inside free text (an error message): from a slash that starts
# a word up to the next space, quote or bracket.
_PATH_IN_TEXT = re.compile(r"(?<![\w.~/])/[^\s'\"`()\[\]{}<>,;:]+")


def looks_like_path(value: str) -> bool:
    """An absolute POSIX or Windows path, or one from a home folder."""
    return value.startswith(("/", "~")) or bool(_WINDOWS_PATH.match(value))


def redact_text(text: str, root: Path | None = None) -> str:
    """An error message without absolute paths: those under `root` made relative to it
    (as given, or resolved), any other replaced by `REDACTED`."""
    if root is not None:
        for prefix in {str(root), str(root.resolve())}:
            text = text.replace(prefix.rstrip("/") + "/", "")
    return _PATH_IN_TEXT.sub(REDACTED, text)


def _scrub(value: Any, key: str = "") -> Any:
    if isinstance(value, str):
        return REDACTED if looks_like_path(value) else value
    if isinstance(value, dict):
        return {k: _scrub(v, k) for k, v in value.items()}
    if isinstance(value, list) and key != "names":  # class names are labels, not paths
        return [_scrub(v) for v in value]
    return value


def public_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """`manifest` without the training arguments, every absolute path redacted."""
    public = dict(manifest)
    if isinstance(public.get("training"), dict):
        public["training"] = {k: v for k, v in public["training"].items()
                              if k not in _HIDDEN_TRAINING_KEYS}
    for section in _SCRUBBED_SECTIONS:
        if section in public:
            public[section] = _scrub(public[section], section)
    return public
