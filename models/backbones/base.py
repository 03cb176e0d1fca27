"""The one surface every backbone has, whatever its architecture.

Like timm's models, each backbone offers `forward_features` (the last feature
map), `forward_pyramid` (feature maps at `PYRAMID_STRIDES` for detection),
named stages that can be frozen by name, its feature width, and the
preprocessing its pretrained weights expect.

Every backbone has the same five stages, `STAGE_NAMES`, so that
``--trainable-stages K`` (train the top K, freeze the rest) means the same
depth in every family:

- ``stem``: the input convolutions, ending at output stride 2 or 4;
- ``layer1`` … ``layer4``: the layers ending at output strides 4, 8, 16 and 32.
  The pyramid's maps are the outputs of ``layer2``, ``layer3`` and ``layer4``.

(ViT-B/16 has one resolution: its patch embedding is the stem and its twelve
blocks make four groups of three.) A stage is a group of the backbone's
attributes (`Backbone.stage_members`), so a family keeps the module names, and
an export the state-dict keys, it had before the stages were made uniform.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar

import torch
from torch import nn

from models.errors import BackboneArgumentError
from models.preprocess import Preprocessing

STAGE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")
# The output strides of `Backbone.forward_pyramid`'s maps, which a detector's levels read.
PYRAMID_STRIDES = (8, 16, 32)


class Backbone(nn.Module):
    """A feature extractor split into the uniform stages, shallowest first.

    Subclasses fill `num_features`, `pyramid_channels`, `preprocessing`, and
    optionally `imagenet_head` (the pretrained 1000-way classifier, kept so the
    ImageNet classifier can be rebuilt), `categories` (its class names),
    `stage_members`, `min_input_size` and `pad_pyramid`. The default `forward_stages`
    runs attributes named after the stages (``self.stem``, ``self.layer1``, …); a
    family laid out otherwise overrides it, and `forward_features` where its
    features are not the last stage's map.
    """

    name: str = ""
    stage_names: tuple[str, ...] = STAGE_NAMES
    # Stage name → the attributes (submodules) it is made of, where it is not the one
    # attribute of its own name. Every parameter but `imagenet_head`'s is in exactly one
    # stage (tests/models/test_backbones.py checks it).
    stage_members: ClassVar[dict[str, tuple[str, ...]]] = {}
    num_features: int = 0
    # Channels of the maps `forward_pyramid` returns, at `PYRAMID_STRIDES`.
    pyramid_channels: tuple[int, int, int] = (0, 0, 0)
    preprocessing: Preprocessing = Preprocessing()
    categories: tuple[str, ...] = ()
    # The smallest input side the network runs on. Padded convolutions and pools take
    # any side (ResNet, the EfficientNets, MobileNetV3); a family whose unpadded layers
    # (or pools without ceil mode) run out of map below some side sets that side.
    min_input_size: int = 1
    # Whether the network's maps fall short of the stride grid (unpadded layers), so
    # that `forward_pyramid` pads them onto it (`pad_to_strides`).
    pad_pyramid: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.imagenet_head: nn.Linear | None = None
        self._frozen: set[str] = set()

    def members(self, stage: str) -> tuple[str, ...]:
        """The attribute names of the modules that make up `stage`."""
        if stage not in self.stage_names:
            raise ValueError(f"unknown stage {stage!r}; expected one of {self.stage_names}")
        return self.stage_members.get(stage, (stage,))

    def stages(self) -> OrderedDict[str, nn.Module]:
        """The stages in forward order, by name; a stage of several modules is given as an
        ``nn.ModuleList`` of them (made on the fly: the state dict is unchanged)."""
        out: OrderedDict[str, nn.Module] = OrderedDict()
        for name in self.stage_names:
            parts = [getattr(self, attr) for attr in self.members(name)]
            out[name] = parts[0] if len(parts) == 1 else nn.ModuleList(parts)
        return out

    def check_input_size(self, height: int, width: int) -> None:
        """Raise `BackboneArgumentError` for an input the network cannot take."""
        if min(height, width) < self.min_input_size:
            raise BackboneArgumentError(f"{self.name} needs inputs of at least "
                                        f"{self.min_input_size} px a side, got {height}x{width}")

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) → the maps at strides 8, 16, 32, as the network computes them:
        [(B, C3, H/8, W/8), (B, C4, H/16, W/16), (B, C5, H/32, W/32)], a few cells fewer
        where its layers are unpadded."""
        self.check_input_size(*x.shape[-2:])
        x = self.layer1(self.stem(x))  # (B, C2, H/4, W/4)
        c3 = self.layer2(x)  # (B, C3, H/8, W/8)
        c4 = self.layer3(c3)  # (B, C4, H/16, W/16)
        c5 = self.layer4(c4)  # (B, C5, H/32, W/32)
        return [c3, c4, c5]

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) → [(B, C3, H/8, W/8), (B, C4, H/16, W/16), (B, C5, H/32, W/32)]
        (sides rounded up): `forward_stages`, padded onto that grid where `pad_pyramid`."""
        maps = self.forward_stages(x)
        return pad_to_strides(maps, x.shape[-2:]) if self.pad_pyramid else maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → the last feature map, (B, C, h, w), which `forward` pools.

        By default the stride-32 stage's map, unpadded. Families differ in its
        width (MobileNetV3's head conv gives 960 channels, pre-logits then 1280
        features) and its grid (ViT-B/16's is at stride 16).
        """
        return self.forward_stages(x)[-1]

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
            raise BackboneArgumentError(
                f"trainable_stages must be between 0 and {len(names)} for {self.name} "
                f"(stages {', '.join(names)}), got {trainable_stages}"
            )
        self._frozen = set(names[:len(names) - trainable_stages])
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
        for name, stage in self.stages().items():
            if name in self._frozen:
                stage.eval()
        return self

    def trainable_stages_from_legacy(self, legacy: int) -> int:
        """The uniform count for a count of the backbone's own stages, as exports made
        before the uniform stages recorded it.

        Then each member was a stage of its own (efficientnet_lite0 had nine: stem,
        stage1 … stage7, head). The answer is the fewest top uniform stages that train
        everything the old count trained: for efficientnet_lite0, 0 → 0, 1–3 → 1,
        4–5 → 2, 6 → 3, 7 → 4, 8–9 → 5. For ResNets nothing changed (K → K).
        """
        order = [m for stage in self.stage_names for m in self.members(stage)]
        if not 0 <= legacy <= len(order):
            raise ValueError(f"a legacy trainable_stages of {self.name} is between 0 and "
                             f"{len(order)}, got {legacy}")
        trained = set(order[len(order) - legacy:]) if legacy else set()
        for k in range(len(self.stage_names) + 1):
            top = self.stage_names[len(self.stage_names) - k:] if k else ()
            if trained <= {m for stage in top for m in self.members(stage)}:
                return k
        return len(self.stage_names)  # unreachable: the full count covers every member


def pad_to_strides(maps: list[torch.Tensor], size: tuple[int, int],
                   strides: tuple[int, ...] = PYRAMID_STRIDES) -> list[torch.Tensor]:
    """Zero-pad each map to ``ceil(H / stride)`` x ``ceil(W / stride)``, centred.

    Networks with unpadded layers (AlexNet's pools, Inception-v3's convolutions and
    pools) give maps a few cells short of the stride grid; the detector's neck and
    anchors need the grid.
    Unpadded layers shrink a map evenly on both sides, so centring the padding keeps
    each cell near the anchor point of its position.
    """
    out = []
    for m, s in zip(maps, strides, strict=True):
        dh = -(-size[0] // s) - m.shape[-2]
        dw = -(-size[1] // s) - m.shape[-1]
        # (left, right, top, bottom); negative values crop, should a map overshoot.
        out.append(nn.functional.pad(m, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2)))
    return out
