"""The compile cache: compiled TorchScript graphs kept on disk between loads.

`service.backends.build_compiled` builds a graph in a child process in about 4 s.
With a compile cache (``OCELLUS_CACHE_DIR/compiled``), a later load of the same
model (a restart, a replica on the same disk, a reload of the same version)
loads the kept graph instead, as OpenVINO's ``CACHE_DIR`` keeps compiled models
and Triton keeps TensorRT engines.

An entry is named by `key`, a hash of everything the graph depends on. The
`MAX_ENTRIES` most recently used are kept (each about the size of the model's
fp32 weights). An entry that does not load is rebuilt and replaced; a directory
that cannot be written only costs the keeping.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torchvision

import models
from models.export import write_atomic
from models.predictor import Predictor

log = logging.getLogger(__name__)

MAX_ENTRIES = 32  # the least recently used go first
# A temporary file older than this was left by a writer that died: a copy takes well
# under a second, so ten minutes leaves room for any live one.
ABANDONED_AFTER_S = 600


def key(predictor: Predictor, example: torch.Tensor) -> str:
    """A hash of what a compiled graph depends on.

    torch's and torchvision's versions, the device and the traced shape; the model's
    weights, its module tree and architecture; and the code, by module name: this
    project's `models` package, the build (`service.backends`) and the source of every
    class in the model and the predictor. Names, versions and metrics of the export
    are left out, so the same weights published again share the entry; paths are
    left out, so two checkouts of the same code share it too.
    """
    digest = hashlib.sha256()

    def add(*parts: Any) -> None:
        for part in parts:
            digest.update(part if isinstance(part, bytes) else repr(part).encode())
            digest.update(b"\0")

    add(torch.__version__, torchvision.__version__, str(predictor.device),
        tuple(example.shape), type(predictor).__qualname__, repr(predictor.model),
        predictor.manifest.architecture)
    for name, tensor in predictor.model.state_dict().items():
        add(name, str(tensor.dtype), tuple(tensor.shape), tensor.detach().cpu().contiguous()
            .reshape(-1).view(torch.uint8).numpy().tobytes())
    package = Path(models.__file__).parent
    sources = {f"models/{p.relative_to(package)}": p for p in package.rglob("*.py")}
    for cls in {type(m) for m in predictor.model.modules()} | set(type(predictor).__mro__):
        try:
            path = Path(inspect.getfile(cls))
        except (TypeError, OSError):  # built in, or defined where no file is (a REPL)
            continue
        if not path.is_relative_to(package):  # the package's files are in already
            sources[cls.__module__] = path
    sources["service.backends"] = Path(__file__).with_name("backends.py")  # the build
    for name, path in sorted(sources.items()):
        if path.suffix == ".py" and path.is_file():
            add(name, path.read_bytes())
    return digest.hexdigest()


def load_graph(path: Path, predictor: Predictor) -> torch.jit.ScriptModule:
    """A saved TorchScript graph, on the predictor's device."""
    with warnings.catch_warnings():  # deprecated in torch 2.14, as TorchScript is
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(path, map_location=predictor.device)


def load(path: Path, predictor: Predictor) -> torch.jit.ScriptModule | None:
    """The kept graph at `path`, or None: none kept, or it does not load (then the
    caller rebuilds it, and `keep` replaces it)."""
    if not path.is_file():  # (torch.jit.load says so with a ValueError)
        return None
    try:
        loaded = load_graph(path, predictor)
    except Exception as exc:  # noqa: BLE001 - a damaged entry is rebuilt
        log.warning("compiled graph %s does not load, rebuilding it: %s", path, exc)
        return None
    with contextlib.suppress(OSError):  # a read-only cache is still used
        path.touch()  # recently used: pruned last
    log.info("compiled graph loaded from the compile cache: %s", path)
    return loaded


def keep(graph: Path, path: Path) -> None:
    """Put a built graph at `path` (atomically), then prune the cache to `MAX_ENTRIES`.

    Never raises for the disk: a read-only or full one leaves the graph served and
    not kept.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, graph.read_bytes())
    except OSError as exc:
        log.info("compiled graph not kept in %s: %s", path.parent, exc)
        return
    # Best effort, file by file: another process may be pruning the same directory.
    entries = sorted(((t, p) for p in path.parent.glob("*.pt")
                      if (t := _mtime(p)) is not None), reverse=True)
    abandoned = time.time() - ABANDONED_AFTER_S
    doomed = [p for _, p in entries[MAX_ENTRIES:]]
    doomed += [p for p in path.parent.glob(".*.tmp")
               if (t := _mtime(p)) is not None and t < abandoned]
    for old in doomed:
        with contextlib.suppress(OSError):
            old.unlink(missing_ok=True)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:  # gone meanwhile
        return None
