"""Preprocessing that travels with the weights.

A `Preprocessing` is data (sizes, mean, std, interpolation, resize mode). It is
written into every export's manifest and rebuilt from it, so the transform used
at serving and evaluation time is never typed twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes a normalised model input.

    Attributes:
        crop_size: Side of the square input the model sees.
        resize_size: For ``mode="center_crop"``, the shorter side is resized to
            this before the centre crop. Ignored for ``letterbox``.
        mean: Per-channel mean, for inputs scaled to [0, 1].
        std: Per-channel standard deviation, for inputs scaled to [0, 1].
        interpolation: ``bilinear`` or ``bicubic``.
        mode: ``center_crop`` (classification) or ``letterbox`` (detection).
    """

    crop_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    mode: Literal["center_crop", "letterbox"] = "center_crop"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(v) for v in known[key])
        return cls(**known)

    def with_size(self, crop_size: int) -> Preprocessing:
        """The same preprocessing at another input size, keeping the crop ratio."""
        ratio = self.resize_size / self.crop_size
        return Preprocessing(
            crop_size=crop_size,
            resize_size=round(crop_size * ratio),
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
            mode=self.mode,
        )

    @property
    def interpolation_mode(self) -> InterpolationMode:
        return InterpolationMode(self.interpolation)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``(..., 3, H, W)`` → float ``(..., 3, H, W)``, scaled and normalised."""
        x = image.float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(3, 1, 1)
        return x.sub_(mean).div_(std)

    def resize_crop(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``(3, H, W)`` → uint8 ``(3, crop, crop)``: shorter side resize, centre crop."""
        if self.mode != "center_crop":
            raise ValueError(f"resize_crop expects mode 'center_crop', got {self.mode!r}")
        image = F.resize(image, [self.resize_size], interpolation=self.interpolation_mode,
                         antialias=True)
        return F.center_crop(image, [self.crop_size, self.crop_size])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``(3, H, W)`` RGB → float ``(3, crop, crop)`` model input."""
        return self.normalize(self.resize_crop(image))
