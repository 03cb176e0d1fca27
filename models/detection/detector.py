"""An anchor-free YOLO-style detector over any backbone in the catalog.

backbone (its pyramid at strides 8/16/32, `PYRAMID_STRIDES`) → light FPN+PAN
neck (all levels `width` channels) → decoupled head per level: a box branch
predicting, for each side (left, top, right, bottom), a distribution over
`reg_max` distances in stride units (DFL, as in YOLOv8), and a class branch
predicting independent class logits. One prediction per grid cell; the anchor
point is the cell centre.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from models.backbones import create_backbone
from models.backbones.base import PYRAMID_STRIDES
from models.backbones.catalog import Weights
from models.preprocess import Preprocessing


class DetectorOutput(NamedTuple):
    """Raw head outputs, all levels flattened into A = sum(H_i * W_i) anchors.

    Attributes:
        dist: ``(B, A, 4 * reg_max)`` logits of the l, t, r, b distance bins.
        cls: ``(B, A, C)`` class logits.
        anchors: ``(A, 2)`` anchor points (cell centres) in input pixels.
        strides: ``(A, 1)`` stride of each anchor's level.
    """

    dist: torch.Tensor
    cls: torch.Tensor
    anchors: torch.Tensor
    strides: torch.Tensor


def conv_bn_act(c_in: int, c_out: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.SiLU(inplace=True))


def make_anchors(sizes: Sequence[tuple[int, int]], strides: Sequence[int], *,
                 device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell-centre anchor points ``(A, 2)`` (x, y in pixels) and strides ``(A, 1)``.

    Anchors are listed level by level, each level row-major, matching the
    flattening of the head outputs.
    """
    points, stride_list = [], []
    for (h, w), s in zip(sizes, strides, strict=True):
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * s
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (h, w) each
        points.append(torch.stack([gx, gy], dim=-1).reshape(-1, 2))
        stride_list.append(torch.full((h * w, 1), float(s), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(stride_list)


def dfl_expectation(dist: torch.Tensor, reg_max: int) -> torch.Tensor:
    """``(..., A, 4 * reg_max)`` bin logits → ``(..., A, 4)`` expected distances in bins.

    The softmax runs over the bins with the anchors innermost, the layout the heads
    write (``dist`` is their ``(..., 4R, A)`` output transposed): torch's CPU softmax
    over a last dimension of 11 or 16 bins is the slow case, measured 24.7 ms against
    1.8 ms for a batch of 8 NanoDet images, results equal within 1e-6 bins.
    """
    probs = dist.transpose(-1, -2).unflatten(-2, (4, reg_max)).softmax(dim=-2)  # (..., 4, R, A)
    bins = torch.arange(reg_max, device=dist.device, dtype=probs.dtype).unsqueeze(-1)
    return (probs * bins).sum(dim=-2).transpose(-1, -2)  # (..., A, 4)


def decode_boxes(dist: torch.Tensor, anchors: torch.Tensor, strides: torch.Tensor,
                 reg_max: int) -> torch.Tensor:
    """DFL logits ``(B, A, 4R)`` → xyxy boxes ``(B, A, 4)`` in input pixels.

    Each side's distance is the expected value of its bin distribution times
    the anchor's stride: box = (ax - l, ay - t, ax + r, ay + b).
    """
    ltrb = dfl_expectation(dist, reg_max) * strides  # (B, A, 4) pixels
    return torch.cat([anchors - ltrb[..., :2], anchors + ltrb[..., 2:]], dim=-1)


class PANNeck(nn.Module):
    """Top-down (FPN) then bottom-up (PAN) fusion; every output has `width` channels."""

    def __init__(self, in_channels: Sequence[int], width: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(conv_bn_act(c, width, k=1) for c in in_channels)
        self.top_down = nn.ModuleList(conv_bn_act(width, width) for _ in range(2))
        self.down = nn.ModuleList(conv_bn_act(width, width, s=2) for _ in range(2))
        self.bottom_up = nn.ModuleList(conv_bn_act(width, width) for _ in range(2))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        c3, c4, c5 = (lat(f) for lat, f in zip(self.lateral, feats, strict=True))
        up = nn.functional.interpolate
        p5 = c5  # (B, W, H/32, W/32)
        p4 = self.top_down[0](c4 + up(p5, size=c4.shape[-2:], mode="nearest"))  # H/16
        p3 = self.top_down[1](c3 + up(p4, size=c3.shape[-2:], mode="nearest"))  # H/8
        n4 = self.bottom_up[0](p4 + self.down[0](p3))  # (B, W, H/16, W/16)
        n5 = self.bottom_up[1](p5 + self.down[1](n4))  # (B, W, H/32, W/32)
        return [p3, n4, n5]


class Detector(nn.Module):
    """Backbone + PAN neck + decoupled anchor-free head.

    Every constructor argument is JSON-able, so an export manifest can rebuild
    the model (`model_args`); the backbone's pretrained weights are only needed
    when training starts, since a saved state dict overrides them.

    Args:
        backbone: A name from `models.backbones.list_backbones()`.
        num_classes: Number of object classes.
        width: Channels of the neck and the head's branches.
        reg_max: Bins of each side's distance distribution (distances up to
            ``reg_max - 1`` strides).
        img_size: Side of the square letterboxed input.
        backbone_weights: ``"imagenet"``, None or a state-dict path (training only).
    """

    def __init__(self, backbone: str, num_classes: int, *, width: int = 64, reg_max: int = 16,
                 img_size: int = 320, backbone_weights: Weights = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if img_size % PYRAMID_STRIDES[-1]:
            raise ValueError(f"img_size must be a multiple of {PYRAMID_STRIDES[-1]}, "
                             f"got {img_size}")
        self.backbone_name, self.num_classes, self.width = backbone, num_classes, width
        self.reg_max, self.img_size = reg_max, img_size
        self.backbone = create_backbone(backbone, weights=backbone_weights)
        self.backbone.check_input_size(img_size, img_size)  # an error naming the minimum
        self.neck = PANNeck(self.backbone.pyramid_channels, width)
        c_box = max(16, width // 4, 4 * reg_max)
        c_cls = max(width, min(num_classes, 100))
        self.box_head = nn.ModuleList(
            nn.Sequential(conv_bn_act(width, c_box), conv_bn_act(c_box, c_box),
                          nn.Conv2d(c_box, 4 * reg_max, 1)) for _ in PYRAMID_STRIDES)
        self.cls_head = nn.ModuleList(
            nn.Sequential(conv_bn_act(width, c_cls), conv_bn_act(c_cls, c_cls),
                          nn.Conv2d(c_cls, num_classes, 1)) for _ in PYRAMID_STRIDES)
        self._init_biases()

    def _init_biases(self) -> None:
        # As in YOLOv8: start with ~5 objects per 640² image, so the class loss is
        # not swamped by confident background at step 0; box bins start uniform-ish.
        for box, cls, s in zip(self.box_head, self.cls_head, PYRAMID_STRIDES, strict=True):
            nn.init.constant_(box[-1].bias, 1.0)
            nn.init.constant_(cls[-1].bias, math.log(5 / self.num_classes / (640 / s) ** 2))

    @property
    def model_args(self) -> dict[str, Any]:
        """JSON-able kwargs that rebuild this architecture (without pretrained weights)."""
        return {"backbone": self.backbone_name, "num_classes": self.num_classes,
                "width": self.width, "reg_max": self.reg_max, "img_size": self.img_size}

    @property
    def preprocessing(self) -> Preprocessing:
        """Letterbox to `img_size` with the backbone's normalisation."""
        p = self.backbone.preprocessing
        return Preprocessing(crop_size=self.img_size, resize_size=self.img_size, mean=p.mean,
                             std=p.std, interpolation=p.interpolation, mode="letterbox")

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        """Normalised ``(B, 3, S, S)`` → raw head outputs (see `DetectorOutput`)."""
        feats = self.neck(self.backbone.forward_pyramid(x))  # 3 x (B, W, S/s, S/s)
        dist = [h(f).flatten(2) for h, f in zip(self.box_head, feats, strict=True)]
        cls = [h(f).flatten(2) for h, f in zip(self.cls_head, feats, strict=True)]
        anchors, strides = make_anchors([f.shape[-2:] for f in feats], PYRAMID_STRIDES,
                                        device=x.device, dtype=x.dtype)
        return DetectorOutput(torch.cat(dist, 2).transpose(1, 2),  # (B, A, 4R)
                              torch.cat(cls, 2).transpose(1, 2),  # (B, A, C)
                              anchors, strides)

    def decode(self, out: DetectorOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw outputs → xyxy boxes ``(B, A, 4)`` in input pixels, probabilities ``(B, A, C)``."""
        return (decode_boxes(out.dist, out.anchors, out.strides, self.reg_max),
                out.cls.sigmoid())
