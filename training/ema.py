"""An exponential moving average of a model's weights, evaluated and exported in its place.

As torchvision's reference ``ExponentialMovingAverage`` and timm's ``ModelEmaV3``:
after every optimiser step, ``ema = d * ema + (1 - d) * weights`` for every
trainable parameter and every floating buffer (batch-norm statistics included).
The decay warms up as TensorFlow's ``ExponentialMovingAverage(num_updates=n)``
does, ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that a short
schedule is not dominated by the random head of its first steps: 0.998 is
reached after about 4,500 steps, a few hundred end near 0.97-0.99.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """The averaged copy of `model` (`module`), updated by `update` after each step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s weights (frozen ones are skipped: equal)."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        params = dict(self.module.named_parameters())
        targets, sources = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                targets.append(params[name])
                sources.append(p.detach())
        buffers = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            if b.dtype.is_floating_point:
                targets.append(buffers[name])
                sources.append(b)
            else:  # counters such as num_batches_tracked
                buffers[name].copy_(b)
        if targets:
            torch._foreach_lerp_(targets, sources, 1.0 - d)

    def state_dict(self) -> dict:
        """The averaged weights and the update count, for a checkpoint."""
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` gave."""
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]
