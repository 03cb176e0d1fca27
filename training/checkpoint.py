"""The random state a training checkpoint carries, so ``--resume`` continues the same run.

A checkpoint holds ``{model, optimizer, lr_scheduler, epoch, args, ...}`` (each
trainer writes its own) and ``rng``: one `rng_state` per process, in rank
order, taken at the end of the epoch. Restored by `restore_rng`, a resumed run
draws the data order and augmentations that the uninterrupted run would have
drawn, as long as the number of processes is the same.

A run resumed in another folder (``ocellus retrain --resume``) takes the
interrupted run's ``best.pt`` from beside the checkpoint (`adopt_best`), so the
export is the best of all epochs, not only of those trained after the resume.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def rng_state(loader_generator: torch.Generator | None = None) -> dict[str, Any]:
    """This process's generators: torch's (CPU, and CUDA's once used), Python's, the loader's.

    Plain tensors, tuples and ints only, so the checkpoint loads with ``weights_only``.
    """
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "loader": None if loader_generator is None
                             else loader_generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(states: list[dict[str, Any]] | None, *, rank: int, world_size: int,
                loader_generator: torch.Generator | None = None) -> None:
    """Set this process's generators from a checkpoint's ``rng`` (one state per rank).

    A checkpoint without them (older), or written by another number of
    processes, leaves the generators as seeded, with a warning: the run
    continues, drawing other (still random) samples than an uninterrupted one.
    """
    if not states or len(states) != world_size:
        log.warning("the checkpoint holds %s random states for %d processes: data order and "
                    "augmentation will not continue the interrupted run's",
                    len(states) if states else "no", world_size)
        return
    state = states[rank]
    torch.set_rng_state(state["torch"].cpu())  # a checkpoint may be loaded onto a GPU
    random.setstate(state["python"])
    if loader_generator is not None and state.get("loader") is not None:
        loader_generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def adopt_best(resume: Path, best_path: Path) -> bool:
    """Give this run the interrupted run's best checkpoint, which lies beside `resume`.

    Args:
        resume: The checkpoint resumed (``.../checkpoints/last.pt``).
        best_path: This run's ``best.pt``.

    Returns:
        Whether `best_path` now holds the interrupted run's best. If not (it was
        not beside `resume`), the caller forgets that run's best score and picks
        among the epochs it trains itself.
    """
    if best_path.is_file():  # resumed in its own folder
        return True
    theirs = Path(resume).parent / "best.pt"
    if not theirs.is_file():
        log.warning("no best.pt beside %s: the export will be the best of the epochs "
                    "trained from here on", resume)
        return False
    shutil.copyfile(theirs, best_path)
    return True
