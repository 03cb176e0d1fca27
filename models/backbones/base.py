"""The one surface every backbone has, whatever its architecture.

Like timm's models, each backbone offers `forward_features` (the last feature
map), `forward_pyramid` (feature maps at strides 8, 16 and 32 for detection),
named stages that can be frozen by name, its feature width, and the
preprocessing its pretrained weights expect.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from models.preprocess import Preprocessing


class Backbone(nn.Module):
    """A feature extractor split into named stages, shallowest first.

    Subclasses fill `stage_names`, `num_features`, `pyramid_channels`,
    `preprocessing`, and optionally `imagenet_head` (the pretrained 1000-way
    classifier, kept so the ImageNet classifier can be rebuilt) and
    `categories` (its class names).
    """

    name: str = ""
    stage_names: tuple[str, ...] = ()
    num_features: int = 0
    # Channels of the maps `forward_pyramid` returns, at strides (8, 16, 32).
    pyramid_channels: tuple[int, int, int] = (0, 0, 0)
    preprocessing: Preprocessing = Preprocessing()
    categories: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.imagenet_head: nn.Linear | None = None
        self._frozen: set[str] = set()

    def stages(self) -> OrderedDict[str, nn.Module]:
        """The stages in forward order, by name."""
        return OrderedDict((name, getattr(self, name)) for name in self.stage_names)

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) → [(B, C3, H/8, W/8), (B, C4, H/16, W/16), (B, C5, H/32, W/32)]."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, num_features, H/32, W/32)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → pooled features (B, num_features)."""
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.forward_features(x), 1), 1)

    def freeze(self, trainable_stages: int = 0) -> None:
        """Freeze every stage but the top `trainable_stages` ones.

        Frozen stages get ``requires_grad=False`` and keep their batch-norm
        statistics (their BN layers stay in eval mode even under ``train()``),
        which is what feature extraction needs.
        """
        names = list(self.stage_names)
        if not 0 <= trainable_stages <= len(names):
            raise ValueError(
                f"trainable_stages must be between 0 and {len(names)} for {self.name}, "
                f"got {trainable_stages}"
            )
        keep = set(names[len(names) - trainable_stages:]) if trainable_stages else set()
        self._frozen = set(names) - keep
        for name, stage in self.stages().items():
            for p in stage.parameters():
                p.requires_grad_(name not in self._frozen)
        self.train(self.training)

    def unfreeze(self) -> None:
        """Make every stage trainable again."""
        self.freeze(len(self.stage_names))

    @property
    def frozen_stages(self) -> tuple[str, ...]:
        return tuple(n for n in self.stage_names if n in self._frozen)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for name in self._frozen:
            getattr(self, name).eval()
        return self
