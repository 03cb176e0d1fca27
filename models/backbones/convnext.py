"""torchvision's ConvNeXt-Tiny.

Its ``features`` Sequential is sliced into the uniform stages (models/
backbones/base.py), torchvision's indices kept as module names: ``stem`` =
features 0 (4x4 patchify conv, stride 4; 96 ch), ``layer1`` = 1 (blocks at
4), ``layer2`` = 2–3 (downsample, blocks at 8; 192), ``layer3`` = 4–5 (16;
384), ``layer4`` = 6–7 (32; 768) plus ``norm``, the LayerNorm that
torchvision's classifier applies to the pooled features before its linear
layer (the `imagenet_head`).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from models.backbones.base import Backbone
from models.backbones.catalog import Weights, add_backbone
from models.backbones.weights import hub_file, load_torchvision_weights, preprocessing_of

CONVNEXT_TINY_WEIGHTS = tvm.ConvNeXt_Tiny_Weights.IMAGENET1K_V1


class ConvNeXtBackbone(Backbone):
    """ConvNeXt-Tiny without its classifier's linear layer (27.8M parameters, 768 features)."""

    name = "convnext_tiny"
    stage_members = {"layer4": ("layer4", "norm")}
    num_features = 768
    pyramid_channels = (192, 384, 768)
    preprocessing = preprocessing_of(CONVNEXT_TINY_WEIGHTS)
    # Its patchify stem (4x4, stride 4) and downsamplings (2x2, stride 2) are unpadded.
    min_input_size = 32

    def __init__(self, net: tvm.ConvNeXt) -> None:
        super().__init__()
        f = net.features
        self.stem, self.layer1, self.layer2, self.layer3, self.layer4 = (
            f[0:1], f[1:2], f[2:4], f[4:6], f[6:8])
        self.norm = net.classifier[0]  # LayerNorm2d over channels
        self.imagenet_head = net.classifier[2]
        self.categories = tuple(CONVNEXT_TINY_WEIGHTS.meta["categories"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pool, then normalise: the order of torchvision's classifier.
        pooled = nn.functional.adaptive_avg_pool2d(self.forward_features(x), 1)  # (B, 768, 1, 1)
        return torch.flatten(self.norm(pooled), 1)  # (B, 768)


@add_backbone("convnext_tiny", weights_file=hub_file(CONVNEXT_TINY_WEIGHTS))
def convnext_tiny(*, weights: Weights = "imagenet") -> ConvNeXtBackbone:
    """ConvNeXt-Tiny (2022) (27.8M parameters, 768 features)."""
    net = tvm.convnext_tiny(weights=None)
    load_torchvision_weights(net, weights, CONVNEXT_TINY_WEIGHTS, model_name="convnext_tiny")
    return ConvNeXtBackbone(net)
