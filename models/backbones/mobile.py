"""torchvision's mobile networks of inverted residual blocks: MobileNetV3-Large, EfficientNet-B0.

Both are a ``features`` Sequential (a strided stem conv, inverted residual
blocks, a 1x1 head conv widening to 960 or 1280 channels), sliced into the
uniform stages (models/backbones/base.py) with torchvision's indices kept as
module names:

| stage | MobileNetV3-Large | EfficientNet-B0 |
|---|---|---|
| ``stem`` | features 0–1 (stride 2; 16 ch) | features 0–1 (stride 2; 16 ch) |
| ``layer1`` | 2–3 (4; 24) | 2 (4; 24) |
| ``layer2`` | 4–6 (8; 40) | 3 (8; 40) |
| ``layer3`` | 7–12 (16; 112) | 4–5 (16; 112) |
| ``layer4`` | 13–15, head 16, pre-logits (32; 160) | 6–7, head 8 (32; 320) |

As efficientnet_lite0 (and EfficientDet), the pyramid's stride-32 map is the
last block's output, before the head conv: a 4-8 times lighter input for the
detector's neck. The head conv serves `forward_features`.

MobileNetV3's classifier is Linear(960, 1280), Hardswish, Dropout, Linear(1280,
1000). Its first two layers act on pooled features and are kept as
``pre_logits`` (part of ``layer4``), so its features are the 1280 the final
linear layer reads, and that layer is the `imagenet_head`.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from models.backbones.base import Backbone
from models.backbones.catalog import Weights, add_backbone
from models.backbones.weights import hub_file, load_torchvision_weights, preprocessing_of

MOBILENET_V3_LARGE_WEIGHTS = tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V2
EFFICIENTNET_B0_WEIGHTS = tvm.EfficientNet_B0_Weights.IMAGENET1K_V1


class InvertedResidualBackbone(Backbone):
    """A ``features`` Sequential cut at `cuts` into stem, layer1…layer4, and its head conv.

    Args:
        name: The catalog name.
        features: torchvision's ``features``; its last module is the head conv.
        cuts: Where layer1, layer2, layer3 and layer4 start.
        pyramid_channels: The outputs of layer2, layer3 and layer4.
        pre_logits: What acts on the pooled features before the final linear layer.
        imagenet_head: That final linear layer.
        weights_enum: The ImageNet weights (preprocessing, class names).
    """

    stage_members = {"layer4": ("layer4", "head", "pre_logits")}

    def __init__(self, name: str, features: nn.Sequential, cuts: tuple[int, int, int, int],
                 pyramid_channels: tuple[int, int, int], *, pre_logits: nn.Module,
                 imagenet_head: nn.Linear, weights_enum) -> None:
        super().__init__()
        self.name = name
        a, b, c, d = cuts
        self.stem, self.layer1, self.layer2, self.layer3, self.layer4 = (
            features[:a], features[a:b], features[b:c], features[c:d], features[d:-1])
        self.head = features[-1]  # 1x1 conv, BN, activation
        self.pre_logits = pre_logits
        self.imagenet_head = imagenet_head
        self.num_features = imagenet_head.in_features
        self.pyramid_channels = pyramid_channels
        self.preprocessing = preprocessing_of(weights_enum)
        self.categories = tuple(weights_enum.meta["categories"])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_stages(x)[-1])  # (B, 960 or 1280, H/32, W/32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(self.forward_features(x), 1), 1)
        return self.pre_logits(pooled)  # (B, num_features)


@add_backbone("mobilenet_v3_large", weights_file=hub_file(MOBILENET_V3_LARGE_WEIGHTS))
def mobilenet_v3_large(*, weights: Weights = "imagenet") -> InvertedResidualBackbone:
    """MobileNetV3-Large (2019) (4.2M parameters with pre-logits, 1280 features)."""
    net = tvm.mobilenet_v3_large(weights=None)
    load_torchvision_weights(net, weights, MOBILENET_V3_LARGE_WEIGHTS,
                             model_name="mobilenet_v3_large")
    return InvertedResidualBackbone(
        "mobilenet_v3_large", net.features, (2, 4, 7, 13), (40, 112, 160),
        pre_logits=nn.Sequential(net.classifier[0], net.classifier[1]),
        imagenet_head=net.classifier[3], weights_enum=MOBILENET_V3_LARGE_WEIGHTS)


@add_backbone("efficientnet_b0", weights_file=hub_file(EFFICIENTNET_B0_WEIGHTS))
def efficientnet_b0(*, weights: Weights = "imagenet") -> InvertedResidualBackbone:
    """EfficientNet-B0 (2019) (4.0M parameters, 1280 features)."""
    net = tvm.efficientnet_b0(weights=None)
    load_torchvision_weights(net, weights, EFFICIENTNET_B0_WEIGHTS, model_name="efficientnet_b0")
    return InvertedResidualBackbone(
        "efficientnet_b0", net.features, (2, 3, 4, 6), (40, 112, 320), pre_logits=nn.Identity(),
        imagenet_head=net.classifier[1], weights_enum=EFFICIENTNET_B0_WEIGHTS)
