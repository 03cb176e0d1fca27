"""A transfer-learning image classifier: a backbone from the catalog plus a new head."""

from __future__ import annotations

import torch
from torch import nn

from models.backbones import Backbone, create_backbone
from models.backbones.catalog import Weights


class ImageClassifier(nn.Module):
    """Backbone → global average pool → dropout → linear head for `num_classes`.

    Args:
        backbone: A backbone name from the catalog (``models.backbones.list_backbones()``).
        num_classes: Number of output classes.
        dropout: Dropout before the head.
        backbone_weights: What to initialise the backbone with: ``"imagenet"`` for
            transfer learning, ``None`` when an export's state dict will fill it.
    """

    def __init__(self, backbone: str, num_classes: int, dropout: float = 0.2,
                 backbone_weights: Weights = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone: Backbone = create_backbone(backbone, weights=backbone_weights)
        # The pretrained ImageNet head is kept aside, not as a submodule, so the
        # state dict has the same keys whatever the backbone was built with.
        pretrained = self.backbone.imagenet_head
        self.pretrained_head_state = pretrained.state_dict() if pretrained is not None else None
        self.backbone.imagenet_head = None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → logits (B, num_classes)."""
        return self.head(self.dropout(self.backbone(x)))


def imagenet_classifier(backbone: str, *, weights: Weights = "imagenet") -> ImageClassifier:
    """The backbone's own ImageNet classifier, 1000 classes, with its pretrained head."""
    model = ImageClassifier(backbone, 1000, backbone_weights=weights)
    if model.pretrained_head_state is None:
        raise ValueError(f"backbone {backbone!r} has no pretrained ImageNet head")
    model.head.load_state_dict(model.pretrained_head_state)
    return model
