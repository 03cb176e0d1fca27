"""Pretrained feature extractors, built by name."""

from models.backbones.base import Backbone
from models.backbones.registry import create_backbone, list_backbones, register_backbone

__all__ = ["Backbone", "create_backbone", "list_backbones", "register_backbone"]
