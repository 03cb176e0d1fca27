"""torchvision's DenseNet-121.

Its ``features`` Sequential is cut into the uniform stages (models/backbones/
base.py), keeping torchvision's module names (``layer2.denseblock2...``):
``stem`` = conv0, norm0, relu0, pool0 (stride 4); ``layer1`` = denseblock1
(4; 256 ch); ``layer2`` = transition1 (whose average pool halves the map) and
denseblock2 (8; 512); ``layer3`` = transition2, denseblock3 (16; 1024);
``layer4`` = transition3, denseblock4, norm5 and the ReLU torchvision applies
in ``forward`` (32; 1024).
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch
from torch import nn
from torchvision import models as tvm

from models.backbones.base import Backbone
from models.backbones.catalog import Weights, add_backbone
from models.backbones.weights import hub_file, load_torchvision_weights, preprocessing_of

DENSENET121_WEIGHTS = tvm.DenseNet121_Weights.IMAGENET1K_V1

# The published files name a dense layer's parts "norm.1", "conv.2"...; torchvision's
# modules are "norm1", "conv2". torchvision renames them when it loads (its private
# densenet._load_state_dict); the same rule here.
_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def rename_old_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``...denselayer1.norm.1.weight`` → ``...denselayer1.norm1.weight``; others unchanged."""
    return {(m.group(1) + m.group(2) if (m := _OLD_KEY.match(k)) else k): v
            for k, v in state.items()}


class DenseNetBackbone(Backbone):
    """DenseNet-121 without its classifier (7.0M parameters, 1024 features)."""

    name = "densenet121"
    num_features = 1024
    pyramid_channels = (512, 1024, 1024)
    preprocessing = preprocessing_of(DENSENET121_WEIGHTS)
    # The transitions' 2x2 average pools floor: 28 px leaves layer4 no map (14, 7, 3, 1, 0).
    min_input_size = 29

    def __init__(self, net: tvm.DenseNet) -> None:
        super().__init__()
        f = net.features
        self.stem = f[0:4]  # conv0, norm0, relu0, pool0
        self.layer1 = f[4:5]  # denseblock1
        self.layer2 = f[5:7]  # transition1, denseblock2
        self.layer3 = f[7:9]  # transition2, denseblock3
        self.layer4 = nn.Sequential(OrderedDict([*f[9:12].named_children(),  # ..., norm5
                                                 ("relu5", nn.ReLU(inplace=True))]))
        self.imagenet_head = net.classifier
        self.categories = tuple(DENSENET121_WEIGHTS.meta["categories"])


@add_backbone("densenet121", weights_file=hub_file(DENSENET121_WEIGHTS))
def densenet121(*, weights: Weights = "imagenet") -> DenseNetBackbone:
    """DenseNet-121 (2017) (7.0M parameters, 1024 features)."""
    net = tvm.densenet121(weights=None)
    load_torchvision_weights(net, weights, DENSENET121_WEIGHTS, model_name="densenet121",
                             adapt=rename_old_keys)
    return DenseNetBackbone(net)
