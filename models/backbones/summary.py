"""What a backbone costs and offers, measured without weights: ``ocellus backbones``.

Each backbone is built on PyTorch's ``meta`` device (shapes only: no memory, no
initialisation, no arithmetic), so summarising the whole catalog takes seconds.
FLOPs come from `torch.utils.flop_counter.FlopCounterMode`, which counts a
multiply-add as 2 FLOPs (torchvision's ``GFLOPS`` metadata counts it as 1, so
its figures are half these).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.backbones.base import PYRAMID_STRIDES, Backbone
from models.backbones.catalog import create_backbone, pretrained_weights_file
from models.errors import OcellusError


@dataclass(frozen=True)
class BackboneSummary:
    """One backbone's facts.

    Attributes:
        name: Its catalog name.
        params_m: Parameters in millions, without the ImageNet head (what a
            classifier or detector built on it holds).
        gflops: GFLOPs of one forward to pooled features at `input_size`, a
            multiply-add counted as 2.
        input_size: The side its pretrained weights were trained and evaluated at.
        min_input_size: The smallest side it runs on.
        num_features: Width of its pooled features.
        imagenet_head: Whether it keeps the ImageNet classifier's linear layer.
        weights_file: Where its ImageNet weights are read from, or None where there is
            no such file to look for (`weights_note` says why).
        weights_note: Why there is no `weights_file` (its package is not installed), or None.
        weights_available: Whether that file is on this machine (nothing is downloaded).
        detect: Whether a detector can be built on it.
        min_detect_size: The smallest detector ``--img-size`` it takes.
    """

    name: str
    params_m: float
    gflops: float
    input_size: int
    min_input_size: int
    num_features: int
    imagenet_head: bool
    weights_file: str | None
    weights_note: str | None
    weights_available: bool
    detect: bool
    min_detect_size: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _min_detect_size(backbone: Backbone) -> int | None:
    """The smallest multiple of the coarsest stride (a detector's input side is one) whose
    pyramid is on the detector's grid, or None."""
    stride = PYRAMID_STRIDES[-1]
    size = -(-backbone.min_input_size // stride) * stride
    try:
        maps = backbone.forward_pyramid(torch.empty(1, 3, size, size))
    except (NotImplementedError, OcellusError):
        return None
    grid = [(size // s, size // s) for s in PYRAMID_STRIDES]
    if [tuple(m.shape[-2:]) for m in maps] != grid or \
            [m.shape[1] for m in maps] != list(backbone.pyramid_channels):
        return None
    return size


def summarize(name: str) -> BackboneSummary:
    """Measure backbone `name` (see `BackboneSummary`)."""
    with torch.device("meta"):
        backbone = create_backbone(name, weights=None).eval()
        size = backbone.preprocessing.crop_size
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            backbone(torch.empty(1, 3, size, size))
        with torch.no_grad():
            min_detect = _min_detect_size(backbone)
    params = sum(p.numel() for n, p in backbone.named_parameters()
                 if not n.startswith("imagenet_head."))
    weights_file = weights_note = None
    try:
        path = pretrained_weights_file(name)
        weights_file, available = str(path), path.is_file()
    except OcellusError as exc:
        weights_note, available = str(exc), False
    return BackboneSummary(
        name=name, params_m=round(params / 1e6, 2),
        gflops=round(counter.get_total_flops() / 1e9, 2), input_size=size,
        min_input_size=backbone.min_input_size, num_features=backbone.num_features,
        imagenet_head=backbone.imagenet_head is not None, weights_file=weights_file,
        weights_note=weights_note, weights_available=available, detect=min_detect is not None,
        min_detect_size=min_detect)
