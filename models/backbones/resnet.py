"""torchvision's ResNets as Ocellus backbones.

Stages: ``stem`` (conv1, bn1, relu, maxpool: stride 4), ``layer1`` (stride 4),
``layer2`` (8), ``layer3`` (16), ``layer4`` (32).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from models.backbones.base import Backbone
from models.backbones.catalog import Weights, add_backbone
from models.backbones.weights import fetch_torchvision_weights, load_state_dict_file
from models.preprocess import Preprocessing

_SPECS = {
    # name: (builder, default weights enum)
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2),
}


class ResNetBackbone(Backbone):
    """A torchvision ResNet without its pooling and classifier."""

    stage_names = ("stem", "layer1", "layer2", "layer3", "layer4")

    def __init__(self, name: str, net: tvm.ResNet, preprocessing: Preprocessing,
                 categories: tuple[str, ...]) -> None:
        super().__init__()
        self.name = name
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1, net.layer2, net.layer3, net.layer4)
        self.num_features = net.fc.in_features
        expansion = self.num_features // 512  # 1 for BasicBlock, 4 for Bottleneck
        self.pyramid_channels = (128 * expansion, 256 * expansion, 512 * expansion)
        self.preprocessing = preprocessing
        self.categories = categories
        self.imagenet_head = net.fc

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.layer1(self.stem(x))  # (B, 64e, H/4, W/4)
        c3 = self.layer2(x)  # (B, 128e, H/8, W/8)
        c4 = self.layer3(c3)  # (B, 256e, H/16, W/16)
        c5 = self.layer4(c4)  # (B, 512e, H/32, W/32)
        return [c3, c4, c5]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_pyramid(x)[-1]


def _preprocessing_of(weights_enum) -> Preprocessing:
    t = weights_enum.transforms()
    return Preprocessing(
        crop_size=t.crop_size[0],
        resize_size=t.resize_size[0],
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=t.interpolation.value,
    )


def _build(name: str, weights: Weights) -> ResNetBackbone:
    builder, weights_enum = _SPECS[name]
    net = builder(weights=None)
    if weights is not None:
        if weights == "imagenet":
            state = fetch_torchvision_weights(weights_enum, model_name=name)
        else:
            state = load_state_dict_file(weights)
        net.load_state_dict(state)
    return ResNetBackbone(name, net, _preprocessing_of(weights_enum),
                          tuple(weights_enum.meta["categories"]))


@add_backbone("resnet18")
def resnet18(*, weights: Weights = "imagenet") -> ResNetBackbone:
    """ResNet-18 (11.7M parameters, 512 features)."""
    return _build("resnet18", weights)


@add_backbone("resnet34")
def resnet34(*, weights: Weights = "imagenet") -> ResNetBackbone:
    """ResNet-34 (21.8M parameters, 512 features)."""
    return _build("resnet34", weights)


@add_backbone("resnet50")
def resnet50(*, weights: Weights = "imagenet") -> ResNetBackbone:
    """ResNet-50 (25.6M parameters, 2048 features)."""
    return _build("resnet50", weights)
