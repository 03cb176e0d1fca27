"""torchvision's ResNets as Ocellus backbones.

Stages: ``stem`` (conv1, bn1, relu, maxpool: stride 4), ``layer1`` (stride 4),
``layer2`` (8), ``layer3`` (16), ``layer4`` (32): torchvision's own names, which
the uniform stages (models/backbones/base.py) take.
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from models.backbones.base import Backbone
from models.backbones.catalog import Weights, add_backbone
from models.backbones.weights import hub_file, load_torchvision_weights, preprocessing_of
from models.preprocess import Preprocessing

_SPECS = {
    # name: (builder, default weights enum)
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2),
}


class ResNetBackbone(Backbone):
    """A torchvision ResNet without its pooling and classifier."""

    def __init__(self, name: str, net: tvm.ResNet, preprocessing: Preprocessing,
                 categories: tuple[str, ...]) -> None:
        super().__init__()
        self.name = name
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1, net.layer2, net.layer3, net.layer4)
        self.num_features = net.fc.in_features
        expansion = self.num_features // 512  # 1 for BasicBlock, 4 for Bottleneck
        # forward_pyramid (Backbone's): layer2, layer3, layer4 at strides 8, 16, 32.
        self.pyramid_channels = (128 * expansion, 256 * expansion, 512 * expansion)
        self.preprocessing = preprocessing
        self.categories = categories
        self.imagenet_head = net.fc


def _build(name: str, weights: Weights) -> ResNetBackbone:
    builder, weights_enum = _SPECS[name]
    net = builder(weights=None)
    load_torchvision_weights(net, weights, weights_enum, model_name=name)
    return ResNetBackbone(name, net, preprocessing_of(weights_enum),
                          tuple(weights_enum.meta["categories"]))


@add_backbone("resnet18", weights_file=hub_file(_SPECS["resnet18"][1]))
def resnet18(*, weights: Weights = "imagenet") -> ResNetBackbone:
    """ResNet-18 (11.7M parameters, 512 features)."""
    return _build("resnet18", weights)


@add_backbone("resnet34", weights_file=hub_file(_SPECS["resnet34"][1]))
def resnet34(*, weights: Weights = "imagenet") -> ResNetBackbone:
    """ResNet-34 (21.8M parameters, 512 features)."""
    return _build("resnet34", weights)


@add_backbone("resnet50", weights_file=hub_file(_SPECS["resnet50"][1]))
def resnet50(*, weights: Weights = "imagenet") -> ResNetBackbone:
    """ResNet-50 (25.6M parameters, 2048 features)."""
    return _build("resnet50", weights)
