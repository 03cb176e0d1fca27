"""Pick the batch size a model serves fastest at on this machine, by measuring it.

Bigger batches are not always faster per image. On a GPU they are, up to memory;
on a CPU core a convnet's activations at batch 8 overflow the caches that batch 1
or 2 fit in, and per-image time grows (EfficientNet-Lite0 at 224 px on one Zen 5
core: 14.8 ms/img at batch 1, 16.0 at 2, 18.5 at 8). A batcher that always fills
`max_batch_size` then serves fewer images per second under load than one that
stops earlier; Triton's model analyzer and TorchServe's benchmark make the same
measurement offline to recommend preferred batch sizes.

At warm-up, every candidate size (powers of two up to the maximum, and the
maximum) is timed in interleaved rounds, so a change of load on the machine hits
every size alike, and each keeps its fastest round. The preferred size is the
LARGEST one whose time per image is within `tolerance` of the best: in service,
every batch also pays thread hand-offs and a Python round trip, which a larger
batch spreads over more images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from service.backends import fastest_seconds

Forward = Callable[[torch.Tensor], Any]
TOLERANCE = 0.1


@dataclass
class BatchSizeReport:
    """The chosen batch size and the measurement behind it."""

    preferred: int
    max: int
    images_per_second: dict[int, float]  # by batch size, fastest round
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def candidate_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... up to `max_batch_size`, and `max_batch_size` itself."""
    sizes, b = {max_batch_size}, 1
    while b < max_batch_size:
        sizes.add(b)
        b *= 2
    return sorted(sizes)


@torch.inference_mode()
def preferred_batch_size(forward: Forward, input_size: int, max_batch_size: int, *,
                         rounds: int = 3, tolerance: float = TOLERANCE) -> BatchSizeReport:
    """Time `forward` at each candidate size; return the largest within `tolerance` of the best.

    Args:
        forward: ``(B, 3, S, S) → outputs``, already warmed up at every size.
        input_size: S.
        max_batch_size: The largest size allowed (the service setting).
        rounds: Timed passes per size, interleaved; the fastest counts.
        tolerance: How much slower per image than the best a larger size may be.
    """
    sizes = candidate_sizes(max_batch_size)
    inputs = {b: torch.zeros(b, 3, input_size, input_size) for b in sizes}
    seconds = fastest_seconds({b: (lambda b=b: forward(inputs[b])) for b in sizes}, rounds)
    per_image = {b: seconds[b] / b for b in sizes}
    best = min(per_image.values())
    chosen = max(b for b in sizes if per_image[b] <= best * (1 + tolerance))
    fastest = min(sizes, key=per_image.__getitem__)
    reason = (f"batch {chosen}: {1 / per_image[chosen]:.1f} img/s"
              + (f", within {tolerance:.0%} of batch {fastest} ({1 / best:.1f} img/s)"
                 if chosen != fastest else ", the fastest per image"))
    return BatchSizeReport(chosen, max_batch_size,
                           {b: round(1 / t, 2) for b, t in per_image.items()}, reason)
