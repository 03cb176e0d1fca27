"""torchvision's GoogLeNet (Inception-v1) and Inception-v3.

Both networks are plain sequences of modules in torchvision, regrouped here
into the uniform stages (models/backbones/base.py) under their torchvision
names (``layer2.inception3a.branch1.conv.weight``):

| stage | GoogLeNet | Inception-v3 |
|---|---|---|
| ``stem`` | conv1, maxpool1 (stride 4) | Conv2d_1a/2a/2b, maxpool1 (stride 4) |
| ``layer1`` | conv2, conv3 (4; 192 ch) | Conv2d_3b, Conv2d_4a (4; 192 ch) |
| ``layer2`` | maxpool2, inception3a/3b (8; 480) | maxpool2, Mixed_5b/5c/5d (8; 288) |
| ``layer3`` | maxpool3, inception4a–4e (16; 832) | Mixed_6a–6e (16; 768) |
| ``layer4`` | maxpool4, inception5a/5b (32; 1024) | Mixed_7a/7b/7c (32; 2048) |

**Auxiliary classifiers.** The pretrained files hold the training-time
auxiliary heads (``aux1.``/``aux2.``, ``AuxLogits.``); they are dropped when
loading, as torchvision does with ``aux_logits=False``.

**Input transform.** torchvision builds these pretrained networks with
``transform_input=True``: forward first maps an ImageNet-normalised input
``(x - m) / s`` to ``(x - 0.5) / 0.5``, the normalisation of the TensorFlow
originals. Here the preprocessing normalises with mean = std = 0.5 directly
(the weights enum's crop, resize and interpolation otherwise): the same
network input, with no hidden step, and the manifest says what the network sees.

**Inception-v3's grid.** Its convolutions and pools are unpadded: for a side
of 32n its maps have 4n-3, 2n-2 and n-2 cells at strides 8, 16 and 32 (299
px: 35, 17, 8), and a side under 75 px leaves nothing. `forward_pyramid` pads
them, centred, to the stride grid for the detector (`pad_pyramid`);
`forward_features` is the unpadded network. GoogLeNet's ceil-mode pools give
the grid exactly; a side under 15 px leaves its unpadded 3x3 pools no map.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

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
from models.preprocess import Preprocessing

GOOGLENET_WEIGHTS = tvm.GoogLeNet_Weights.IMAGENET1K_V1
INCEPTION_V3_WEIGHTS = tvm.Inception_V3_Weights.IMAGENET1K_V1


def _tf_preprocessing(weights_enum) -> Preprocessing:
    """The enum's eval transform with the normalisation ``transform_input`` would give."""
    return dataclasses.replace(preprocessing_of(weights_enum), mean=(0.5,) * 3, std=(0.5,) * 3)


def _group(net: nn.Module, *names: str) -> nn.Sequential:
    return nn.Sequential(OrderedDict((n, getattr(net, n)) for n in names))


class GoogLeNetBackbone(Backbone):
    """GoogLeNet without its pooling, dropout and classifier (5.6M parameters)."""

    name = "googlenet"
    num_features = 1024
    pyramid_channels = (480, 832, 1024)
    preprocessing = _tf_preprocessing(GOOGLENET_WEIGHTS)
    min_input_size = 15

    def __init__(self, net: tvm.GoogLeNet) -> None:
        super().__init__()
        self.stem = _group(net, "conv1", "maxpool1")
        self.layer1 = _group(net, "conv2", "conv3")
        self.layer2 = _group(net, "maxpool2", "inception3a", "inception3b")
        self.layer3 = _group(net, "maxpool3", *(f"inception4{c}" for c in "abcde"))
        self.layer4 = _group(net, "maxpool4", "inception5a", "inception5b")
        self.imagenet_head = net.fc
        self.categories = tuple(GOOGLENET_WEIGHTS.meta["categories"])


class InceptionV3Backbone(Backbone):
    """Inception-v3 without its pooling, dropout and classifier (21.8M parameters)."""

    name = "inception_v3"
    num_features = 2048
    pyramid_channels = (288, 768, 2048)
    preprocessing = _tf_preprocessing(INCEPTION_V3_WEIGHTS)
    min_input_size = 75
    pad_pyramid = True  # forward_features stays unpadded: (B, 2048, ~H/32 - 2, ~W/32 - 2)

    def __init__(self, net: tvm.Inception3) -> None:
        super().__init__()
        self.stem = _group(net, "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1")
        self.layer1 = _group(net, "Conv2d_3b_1x1", "Conv2d_4a_3x3")
        self.layer2 = _group(net, "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d")
        self.layer3 = _group(net, *(f"Mixed_6{c}" for c in "abcde"))
        self.layer4 = _group(net, "Mixed_7a", "Mixed_7b", "Mixed_7c")
        self.imagenet_head = net.fc
        self.categories = tuple(INCEPTION_V3_WEIGHTS.meta["categories"])


@add_backbone("googlenet", weights_file=hub_file(GOOGLENET_WEIGHTS))
def googlenet(*, weights: Weights = "imagenet") -> GoogLeNetBackbone:
    """GoogLeNet (2014) (5.6M parameters without the classifier, 1024 features)."""
    net = tvm.googlenet(weights=None, aux_logits=False, transform_input=False,
                        init_weights=True)
    load_torchvision_weights(net, weights, GOOGLENET_WEIGHTS, model_name="googlenet",
                             adapt=without_keys("aux1.", "aux2."))
    return GoogLeNetBackbone(net)


@add_backbone("inception_v3", weights_file=hub_file(INCEPTION_V3_WEIGHTS))
def inception_v3(*, weights: Weights = "imagenet") -> InceptionV3Backbone:
    """Inception-v3 (2015), 299 px (21.8M parameters, 2048 features)."""
    net = tvm.inception_v3(weights=None, aux_logits=False, transform_input=False,
                           init_weights=True)
    load_torchvision_weights(net, weights, INCEPTION_V3_WEIGHTS, model_name="inception_v3",
                             adapt=without_keys("AuxLogits."))
    return InceptionV3Backbone(net)
