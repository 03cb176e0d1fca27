"""torchvision's ViT-B/16, with its position embeddings interpolated to any input size.

**Stages.** A vision transformer has one resolution (16 px patches), so its
uniform stages (models/backbones/base.py) are by depth: ``stem`` = the patch
embedding (torchvision's ``conv_proj``, ``class_token`` and
``encoder.pos_embedding``, in `PatchEmbedding`), ``layer1`` …
``layer4`` = its twelve encoder blocks in groups of three (torchvision's names
kept: ``layer2.encoder_layer_3...``), the final LayerNorm ``ln`` with
``layer4``.

**Input size.** torchvision's ``forward`` insists on its 224 px. Here any side
that is a multiple of 16 works: the 14x14 grid of position embeddings is
resized bicubically to the input's grid (antialiased where it shrinks), as
DeiT and timm do; at 224 px the network is torchvision's exactly. Another side
raises `BackboneArgumentError`.

**Features.** The pooled features are the class token after ``ln``, which
torchvision's head (the `imagenet_head`) reads. `forward_features` is the
patch tokens as a map at stride 16. For detection, `forward_pyramid` builds a
simple feature pyramid from that one map, as ViTDet does, but without
parameters: stride 8 by bilinear 2x upsampling, stride 16 as it is, stride 32
by 2x2 max-pooling (768 channels each). ViTDet learns its 2x upsampling (a
transposed conv); here the detector's neck does the learning, and the backbone
keeps exactly torchvision's parameters.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision import models as tvm

from models.backbones.base import Backbone
from models.backbones.catalog import Weights, add_backbone
from models.backbones.weights import hub_file, load_torchvision_weights, preprocessing_of
from models.errors import BackboneArgumentError

VIT_B_16_WEIGHTS = tvm.ViT_B_16_Weights.IMAGENET1K_V1
PATCH = 16


class PatchEmbedding(nn.Module):
    """The stem: 16 px patches → tokens, the class token first, position embeddings added.

    Args:
        net: torchvision's ViT, whose ``conv_proj``, ``class_token`` and
            ``encoder.pos_embedding`` it takes.
    """

    def __init__(self, net: tvm.VisionTransformer) -> None:
        super().__init__()
        self.conv_proj = net.conv_proj  # (B, 3, H, W) → (B, 768, H/16, W/16)
        self.class_token = net.class_token  # (1, 1, 768)
        self.pos_embedding = net.encoder.pos_embedding  # (1, 1 + 14 * 14, 768)
        self.grid = net.image_size // PATCH  # 14: the grid the embeddings were trained on

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """(1, 1 + h * w, 768): the class token's embedding, and the grid's resized to h x w."""
        if (h, w) == (self.grid, self.grid):
            return self.pos_embedding
        cls, grid = self.pos_embedding[:, :1], self.pos_embedding[:, 1:]
        grid = grid.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)  # (1, 768, 14, 14)
        # Antialiased where the grid shrinks, so that each embedding averages those it covers.
        grid = nn.functional.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False,
                                         antialias=h < self.grid or w < self.grid)
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x)  # (B, 768, h, w)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # (B, h * w, 768)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.position_embedding(h, w)  # (B, 1 + h * w, 768)


class ViTBackbone(Backbone):
    """ViT-B/16 without its classification head (85.8M parameters, 768 features)."""

    name = "vit_b_16"
    stage_members = {"layer4": ("layer4", "ln")}
    num_features = 768
    pyramid_channels = (768, 768, 768)
    preprocessing = preprocessing_of(VIT_B_16_WEIGHTS)
    min_input_size = PATCH

    def __init__(self, net: tvm.VisionTransformer) -> None:
        super().__init__()
        self.stem = PatchEmbedding(net)
        blocks = list(net.encoder.layers.named_children())  # 12 encoder blocks
        for i in range(4):
            setattr(self, f"layer{i + 1}", nn.Sequential(OrderedDict(blocks[3 * i:3 * i + 3])))
        self.ln = net.encoder.ln
        self.imagenet_head = net.heads.head
        self.categories = tuple(VIT_B_16_WEIGHTS.meta["categories"])

    def check_input_size(self, height: int, width: int) -> None:
        super().check_input_size(height, width)
        if height % PATCH or width % PATCH:
            raise BackboneArgumentError(f"{self.name} needs a side that is a multiple of its "
                                        f"{PATCH} px patches, got {height}x{width}")

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → normalised tokens (B, 1 + H/16 * W/16, 768), class token first."""
        self.check_input_size(*x.shape[-2:])
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.ln(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._tokens(x)[:, 0]  # (B, 768): the class token

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → patch tokens as a map (B, 768, H/16, W/16)."""
        h, w = x.shape[-2] // PATCH, x.shape[-1] // PATCH
        return self._tokens(x)[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The simple pyramid (module docstring) from the one map at stride 16."""
        c4 = self.forward_features(x)  # (B, 768, H/16, W/16)
        c3 = nn.functional.interpolate(c4, scale_factor=2.0, mode="bilinear",
                                       align_corners=False)  # (B, 768, H/8, W/8)
        c5 = nn.functional.max_pool2d(c4, 2, ceil_mode=True)  # (B, 768, H/32, W/32)
        return [c3, c4, c5]


@add_backbone("vit_b_16", weights_file=hub_file(VIT_B_16_WEIGHTS))
def vit_b_16(*, weights: Weights = "imagenet") -> ViTBackbone:
    """ViT-B/16 (2020) (85.8M parameters, 768 features)."""
    net = tvm.vit_b_16(weights=None)
    load_torchvision_weights(net, weights, VIT_B_16_WEIGHTS, model_name="vit_b_16")
    return ViTBackbone(net)
