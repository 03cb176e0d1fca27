"""The plain convolution stacks: torchvision's AlexNet and VGG-16 (with batch norm).

Both are a ``features`` Sequential of convolutions and max-pools, cut here into
the uniform stages (models/backbones/base.py) by slicing: the slices keep
torchvision's indices as module names (``layer2.14.weight`` is
``features.14.weight``). Their classifiers are MLPs over a fixed 6x6 or 7x7 map
(37M and 120M parameters: most of each network), not a plain linear layer on
pooled features, so they are dropped: no `imagenet_head`, and `num_features`
is the last map's channels, globally average-pooled.

VGG-16 has five blocks of convolutions, each ending in a max-pool that halves
the map: each block is a stage, and each stage's output is at its stride
(``stem`` 2, ``layer1`` 4, ``layer2`` 8, ``layer3`` 16, ``layer4`` 32).

AlexNet is irregular. conv1 (11x11, stride 4) alone brings the map to stride
4, so it is the ``stem`` and ``layer1`` is empty (``--trainable-stages`` 3 and
4 train the same layers). Then pool1 + conv2 end at stride 8 (``layer2``, 192
channels), pool2 + conv3 + conv4 at 16 (``layer3``, 256), conv5 + pool3 at 32
(``layer4``, 256). Its convolutions are padded, but conv1's padding of 2 is
short of its 11x11 kernel (8n-1 cells for a side of 32n), and its three max-pools
(3x3, stride 2) are unpadded, so the maps are one cell short of the stride grid
(4n-1, 2n-1, n-1; 224 px gives torchvision's 27, 13 and 6), and a side under 63
px leaves nothing. `forward_pyramid` therefore pads each map, centred, to the
grid the detector's anchors need (`pad_pyramid`); `forward_features` is the
unpadded network.

VGG's 2x2 pools halve the map five times: a side under 32 px leaves nothing.

Both classifiers are replaced before the weights load, their keys dropped from
the file's state dict, so that they are never filled (VGG's is 0.5 GB).
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from models.backbones.base import Backbone
from models.backbones.catalog import Weights, add_backbone
from models.backbones.weights import (
    hub_file,
    load_torchvision_weights,
    preprocessing_of,
    without_keys,
)

ALEXNET_WEIGHTS = tvm.AlexNet_Weights.IMAGENET1K_V1
VGG16_BN_WEIGHTS = tvm.VGG16_BN_Weights.IMAGENET1K_V1


class AlexNetBackbone(Backbone):
    """AlexNet's five convolutions (2.5M parameters, 256 features)."""

    name = "alexnet"
    num_features = 256
    pyramid_channels = (192, 256, 256)
    preprocessing = preprocessing_of(ALEXNET_WEIGHTS)
    min_input_size = 63
    pad_pyramid = True

    def __init__(self, net: tvm.AlexNet) -> None:
        super().__init__()
        f = net.features
        self.stem = f[0:2]  # conv1, relu: (B, 64, H/4, W/4)
        self.layer1 = nn.Sequential()  # nothing more at stride 4
        self.layer2 = f[2:5]  # pool1, conv2, relu: (B, 192, H/8, W/8)
        self.layer3 = f[5:10]  # pool2, conv3, relu, conv4, relu: (B, 256, H/16, W/16)
        self.layer4 = f[10:13]  # conv5, relu, pool3: (B, 256, H/32, W/32)


class VGGBackbone(Backbone):
    """VGG-16 with batch norm, its 13 convolutions (14.7M parameters, 512 features)."""

    name = "vgg16_bn"
    num_features = 512
    pyramid_channels = (256, 512, 512)
    preprocessing = preprocessing_of(VGG16_BN_WEIGHTS)
    min_input_size = 32

    def __init__(self, net: tvm.VGG) -> None:
        super().__init__()
        f = net.features  # (conv, bn, relu) x 2, 2, 3, 3, 3, each block closed by a max-pool
        self.stem = f[0:7]  # 64 channels, stride 2
        self.layer1 = f[7:14]  # 128, stride 4
        self.layer2 = f[14:24]  # 256, stride 8
        self.layer3 = f[24:34]  # 512, stride 16
        self.layer4 = f[34:44]  # 512, stride 32


def _without_classifier(builder, weights: Weights, weights_enum, name: str) -> nn.Module:
    """torchvision's network with its classifier replaced before the weights load, whose
    keys are dropped from the file's state dict: it is never filled."""
    net = builder(weights=None)
    net.classifier = nn.Identity()
    load_torchvision_weights(net, weights, weights_enum, model_name=name,
                             adapt=without_keys("classifier."))
    return net


@add_backbone("alexnet", weights_file=hub_file(ALEXNET_WEIGHTS))
def alexnet(*, weights: Weights = "imagenet") -> AlexNetBackbone:
    """AlexNet (2012) without its classifier (2.5M parameters, 256 features)."""
    return AlexNetBackbone(_without_classifier(tvm.alexnet, weights, ALEXNET_WEIGHTS, "alexnet"))


@add_backbone("vgg16_bn", weights_file=hub_file(VGG16_BN_WEIGHTS))
def vgg16_bn(*, weights: Weights = "imagenet") -> VGGBackbone:
    """VGG-16 with batch norm (2014) without its classifier (14.7M parameters, 512 features)."""
    return VGGBackbone(_without_classifier(tvm.vgg16_bn, weights, VGG16_BN_WEIGHTS, "vgg16_bn"))
