"""The self-describing export: ``model.safetensors`` plus ``manifest.json``.

The manifest carries everything needed to serve (task, architecture and its
arguments, label names, preprocessing) and to audit (metrics on the evaluation
set, the data set's fingerprint, creation time, provenance, sha256 of the
weights). `load_export` verifies the hash and rebuilds the model from the
manifest alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from models.backbones.base import Backbone
from models.errors import BackboneArgumentError, ExportError
from models.factory import build_model
from models.preprocess import Preprocessing
from models.tasks import TASKS

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class Manifest:
    """What an export says about itself. Serialised as ``manifest.json``."""

    task: str  # a key of `models.tasks.TASKS`
    architecture: dict[str, Any]
    labels: list[str]
    preprocessing: dict[str, Any]
    name: str = "model"
    # Serving defaults of the task's postprocess options, fixed when the model is
    # exported or imported (detect: ``multi_label``, how its upstream turns scores
    # into boxes). A request may still override them.
    postprocessing: dict[str, Any] = field(default_factory=dict)
    version: str = "1"
    # "fp32", or "int8" for an export `ocellus quantize` wrote (models/int8.py): its
    # ``quantization`` section says how it was calibrated, its files, and the accuracy
    # drop it measured against fp32.
    precision: str = "fp32"
    quantization: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    weights_sha256: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def preprocess(self) -> Preprocessing:
        return Preprocessing.from_dict(self.preprocessing)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "manifest") -> Manifest:
        """Validate and build; every problem names the field, what was expected and what came."""
        if not isinstance(data, dict):
            raise ExportError(f"{source}: expected a JSON object, got {type(data).__name__}")
        required = ("task", "architecture", "labels", "preprocessing", "weights_sha256")
        missing = [k for k in required if k not in data]
        if missing:
            raise ExportError(f"{source}: missing required field(s) {missing}")
        if data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ExportError(
                f"{source}: format_version {data['format_version']} is newer than this "
                f"Ocellus supports ({FORMAT_VERSION}); upgrade Ocellus"
            )
        if data["task"] not in TASKS:
            raise ExportError(f"{source}: task must be one of {sorted(TASKS)}, "
                              f"got {data['task']!r}")
        arch = data["architecture"]
        if not isinstance(arch, dict) or "name" not in arch:
            raise ExportError(f"{source}: architecture must be {{'name', 'args'}}, got {arch!r}")
        labels = data["labels"]
        if not isinstance(labels, list) or not labels or not all(
            isinstance(x, str) for x in labels
        ):
            raise ExportError(f"{source}: labels must be a non-empty list of strings")
        if data.get("precision", "fp32") not in ("fp32", "int8"):
            raise ExportError(f"{source}: precision must be 'fp32' or 'int8', "
                              f"got {data['precision']!r}")
        quantization = data.get("quantization", {})
        if not isinstance(quantization, dict) or not all(
                isinstance(quantization.get(k, {}), dict) for k in ("files", "drop")):
            raise ExportError(f"{source}: quantization must be an object whose files and drop "
                              f"are objects, got {quantization!r}")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """fsync a folder, so a rename inside it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace `path` with `data`: temp file in the same folder, fsync, rename, fsync folder.

    A reader sees the old file or the new one, never half of one, and a crash
    at any point leaves at most a hidden ``.NAME.*.tmp`` beside it.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def save_export(model: nn.Module, out_dir: str | Path, manifest: Manifest) -> Manifest:
    """Write `model`'s weights and `manifest` to `out_dir`.

    A new `out_dir` is written as a temporary sibling folder, fsynced, then
    renamed into place, so a reader never sees half an export. In an existing
    folder (which may hold checkpoints and plots beside the export) each file
    is replaced atomically, weights first; a reader in between sees a hash
    mismatch and refuses, never a half-written model.

    Returns:
        The manifest as written, with ``weights_sha256`` and ``created_at`` set.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Shared tensors (e.g. tied weights) must be cloned for safetensors.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    blob = save(state, metadata={"format": "pt"})
    manifest.weights_sha256 = hashlib.sha256(blob).hexdigest()
    manifest.created_at = manifest.created_at or datetime.now(UTC).isoformat(timespec="seconds")
    text = (json.dumps(manifest.to_dict(), indent=2) + "\n").encode()
    fresh = not out_dir.exists()
    target = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent)) \
        if fresh else out_dir
    try:
        write_atomic(target / WEIGHTS_FILE, blob)
        write_atomic(target / MANIFEST_FILE, text)
        if fresh:
            os.replace(target, out_dir)
            fsync_dir(out_dir.parent)
    except BaseException:
        if fresh:
            shutil.rmtree(target, ignore_errors=True)
        raise
    return manifest


def read_manifest(path: str | Path) -> Manifest:
    """Read and validate ``manifest.json`` of the export at `path`."""
    path = Path(path)
    file = path / MANIFEST_FILE
    if not file.is_file():
        raise ExportError(f"{path} is not an Ocellus export: {MANIFEST_FILE} not found")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{file}: not valid JSON ({exc})") from exc
    return Manifest.from_dict(data, source=str(file))


def load_export(path: str | Path, *, device: str | torch.device = "cpu"
                ) -> tuple[nn.Module, Manifest]:
    """Verify and load an export.

    Returns:
        The model in eval mode on `device`, and its manifest.

    Raises:
        ExportError: Missing files, a bad manifest, a weights hash mismatch
            (tampering or a mixed-up file), weights that don't fit the
            architecture, or an input size its backbone cannot take.
    """
    path = Path(path)
    manifest = read_manifest(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise ExportError(f"{path}: {WEIGHTS_FILE} not found")
    actual = sha256_file(weights)
    if actual != manifest.weights_sha256:
        raise ExportError(
            f"{weights}: sha256 mismatch: the manifest expects {manifest.weights_sha256}, "
            f"the file has {actual}. The weights were modified or belong to another export."
        )
    model = build_model(manifest.architecture)
    try:
        state = load_file(str(weights))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ExportError(
            f"{weights}: the weights do not fit architecture {manifest.architecture}: {exc}"
        ) from exc
    # A label per output class: more classes than labels would index past the list
    # at postprocess, fewer would never name some labels.
    outputs = manifest.architecture.get("args", {}).get(
        "num_classes", getattr(model, "num_classes", None))
    if outputs is not None and outputs != len(manifest.labels):
        raise ExportError(f"{path}: the model outputs {outputs} classes, the manifest names "
                          f"{len(manifest.labels)} labels; they must be equal")
    # Every input is resized to the manifest's size: one the backbone cannot take is the
    # export's fault, refused here rather than failing each request as if it were bad.
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, Backbone):
        size = manifest.preprocess.crop_size
        try:
            backbone.check_input_size(size, size)
        except BackboneArgumentError as exc:
            raise ExportError(f"{path}: the manifest resizes inputs to {size} px, but {exc}"
                              ) from exc
    return model.eval().to(device), manifest
