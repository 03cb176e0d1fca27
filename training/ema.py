"""An exponential moving average of a model's weights, evaluated and exported in its place.

As timm's ``ModelEmaV3`` and torchvision's reference ``ExponentialMovingAverage``:
after every optimiser step, ``ema = d * ema + (1 - d) * weights`` for every
parameter and buffer (batch-norm statistics included), with the decay warmed up
as ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that a short
schedule is not dominated by the random head of its first steps.
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
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        mine = self.module.state_dict()
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                mine[name].lerp_(value.detach(), 1.0 - d)
            else:  # counters such as num_batches_tracked
                mine[name].copy_(value)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]
