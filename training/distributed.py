"""Data-parallel training under ``torchrun``: the process group and the rank helpers.

Both trainers run their ``main`` inside `distributed`. Launched by ``torchrun``
(which sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the rendezvous
address), it joins the process group: gloo on the CPU, nccl on CUDA, as
``--device`` says. Launched plainly, it yields a context of one process whose
helpers do nothing, and training runs exactly as without it.

The division of labour, as in torchvision's reference scripts:

- every rank trains on its shard of each epoch (a `DistributedSampler`, its own
  random stream for augmentation) with ``--batch-size / WORLD_SIZE`` images per
  step, so the global batch, and with it the learning rate, means what it means
  in one process;
- rank 0 alone evaluates (the full val split, with the model unwrapped, or the
  EMA of its weights that rank 0 alone keeps), logs,
  checkpoints and exports, and decides when to stop; the others wait for its
  decision (`DistributedContext.broadcast`) and log only warnings.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a rank waits for the others at a collective. Ranks wait for rank 0 while it
# evaluates the whole val split and writes a checkpoint: far longer than the default
# 10 minutes on a CPU with a large val split.
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the run.

    Attributes:
        device: The device this process trains on (``cuda:LOCAL_RANK`` under
            torchrun on CUDA).
        rank: Global rank, 0 to ``world_size - 1``.
        local_rank: Rank on this node.
        world_size: Number of processes, all nodes together.
        enabled: Launched by torchrun: the process group is up and the model is
            wrapped in `DistributedDataParallel` (even with one process).
    """

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that evaluates, logs, checkpoints and exports."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.enabled:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any: a decision all ranks share."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)], device=self.device)  # nccl reduces CUDA tensors only
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over the ranks (losses and counts of the shards)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj`, on every rank (the others' are ignored)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def local_batch_size(self, global_batch: int) -> int:
        """The images per step of one process: ``--batch-size`` is the global batch.

        Raises:
            ValueError: `global_batch` does not split evenly over the processes.
        """
        if global_batch % self.world_size:
            raise ValueError(f"--batch-size is the global batch, split evenly over the "
                             f"{self.world_size} processes; expected a multiple of "
                             f"{self.world_size}, got {global_batch}")
        return global_batch // self.world_size

    def sampler(self, dataset: Dataset, *, seed: int) -> DistributedSampler | None:
        """This rank's shuffled shard of `dataset` (None without torchrun: shuffle it all).

        Call ``set_epoch(epoch)`` on it before each epoch, or every epoch draws
        the same order.
        """
        if not self.enabled:
            return None
        return DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank,
                                  shuffle=True, seed=seed)

    def seed_process(self, seed: int) -> None:
        """Give each rank its own stream for augmentation and dropout (``seed + rank``).

        Call it after the model is built: the weights start the same everywhere
        anyway (DDP copies rank 0's), but the ranks' shards should not all be
        cropped and flipped alike. Without torchrun it does nothing.
        """
        if self.enabled:
            torch.manual_seed(seed + self.rank)
            random.seed(seed + self.rank)

    def wrap(self, model: nn.Module, *, find_unused_parameters: bool = False) -> nn.Module:
        """`model` as this run trains it: in `DistributedDataParallel` under torchrun.

        With several processes on CUDA, batch-norm layers that train become
        `nn.SyncBatchNorm`, so their statistics are those of the global batch
        (in place: `model` itself is still the one to evaluate and save). On
        the CPU, where SyncBatchNorm does not run, each process normalises with
        its own shard's statistics. Frozen layers (feature extraction) are left
        alone: they do not update their statistics.

        Args:
            model: The model, on `device`.
            find_unused_parameters: Some trainable parameters take no part in
                the loss (DDP must then look for them after each backward).
        """
        if not self.enabled:
            return model
        if self.world_size > 1 and trains_batch_norm(model):
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                log.info("batch norm trains with each process's own statistics "
                         "(SyncBatchNorm needs CUDA)")
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids,
                                       find_unused_parameters=find_unused_parameters)


LOCAL = DistributedContext(torch.device("cpu"))
"""One plain process: the default of functions that take a context."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a `DistributedDataParallel` wrapper (or `model` itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def trains_batch_norm(model: nn.Module) -> bool:
    """Whether any batch-norm layer of `model` updates its statistics in ``train()`` mode."""
    was = model.training
    model.train()
    found = any(isinstance(m, _BatchNorm) and m.training for m in model.modules())
    model.train(was)
    return found


def _process_device(device: str, local_rank: int) -> torch.device:
    """``--device`` for this process: ``cuda`` becomes ``cuda:LOCAL_RANK``."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev
    if dev.index is not None:
        raise ValueError(f"under torchrun, --device cuda gives each process its own GPU "
                         f"(cuda:LOCAL_RANK); expected 'cuda', got {device!r}")
    return torch.device("cuda", local_rank)


@contextmanager
def distributed(device: str) -> Iterator[DistributedContext]:
    """Join torchrun's process group for the block, and leave it even on error.

    Without torchrun (no ``WORLD_SIZE`` in the environment) it yields a
    one-process context and touches nothing. A group already set up by the
    caller is used as it is, and left up.

    Args:
        device: ``--device``: ``cpu`` (gloo) or ``cuda`` (nccl).
    """
    if "WORLD_SIZE" not in os.environ:
        yield DistributedContext(torch.device(device))
        return
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = _process_device(device, local_rank)
    owned = not dist.is_initialized()
    if owned:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT,
                                device_id=dev if dev.type == "cuda" else None)
    world = DistributedContext(dev, rank=dist.get_rank(), local_rank=local_rank,
                               world_size=dist.get_world_size(), enabled=True)
    root = logging.getLogger()
    level = root.level
    if not world.is_main:
        root.setLevel(max(level, logging.WARNING))  # one log: rank 0's
    log.info("data-parallel: %d processes, backend %s, this one on %s", world.world_size,
             dist.get_backend(), dev)
    try:
        yield world
    finally:
        root.setLevel(level)
        if owned:
            dist.destroy_process_group()
