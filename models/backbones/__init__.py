"""Pretrained feature extractors, built by name."""

from models.backbones.base import Backbone
from models.backbones.catalog import add_backbone, create_backbone, list_backbones

__all__ = ["Backbone", "create_backbone", "list_backbones", "add_backbone"]
