"""Preprocessing that travels with the weights.

A `Preprocessing` is data (sizes, mean, std, interpolation, resize mode). It is
written into every export's manifest and rebuilt from it, so the transform used
at serving and evaluation time is never typed twice.

Long, thin images: crop, not refuse. Resizing the shorter side to
``resize_size`` multiplies the longer side by the same factor: an 8x6,000,000
image would become a 256x192,000,000 tensor (~150 GB) of which the centre crop
keeps 224x224. So when the longer side is more than `WINDOW_ASPECT_RATIO` times
the shorter, `Preprocessing.resize_crop` first cuts the original down to the
centred window that the crop would keep, plus a margin for the resize filter,
and resizes only that, at the scale the whole image would have had. The work is
then bounded by the crop size whatever the aspect ratio, and the result equals
the whole-image resize up to the sub-pixel placement of the window (tested).
Refusing such images was the alternative; it would make a valid image (a
banner, a scanned receipt strip) an error, where the crop answers what the
model would have answered with unbounded memory. Ordinary photos (up to 2:1,
3:2 and 4:3 included) take the whole-image path and are unchanged, bit for bit.
Detection's letterbox is bounded by construction: its longer side becomes the
input size, so it only ever shrinks a long image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Beyond this ratio of longer to shorter side, resize_crop resizes only the centred
# window that the crop keeps (module docstring). 2:1 leaves every common photo format
# (4:3, 3:2, 16:9, 2:1) on the whole-image path.
WINDOW_ASPECT_RATIO = 2.0


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
    def decode_size(self) -> int:
        """The shorter side that a reduced JPEG decode must keep (`decode_image`'s
        ``target_size``) for this preprocessing to only ever downsample it: the resize
        target of ``center_crop``, the input size of ``letterbox`` (its longer side
        becomes that).

        A 640x480 JPEG decoded to keep 224 (the crop) comes out at 320x240 and is then
        upsampled to 256: on the bundled photos at 480 and 960 px, such inputs agreed
        with the full decode's top-1 on 28 of 32, at a mean KL divergence of 0.029;
        decoded to keep 256, on 30 of 32 at 0.0023 (the two misses are DCT scaling at
        960 px, which the full decode's resize does not match exactly).
        """
        return self.resize_size if self.mode == "center_crop" else self.crop_size

    @property
    def interpolation_mode(self) -> InterpolationMode:
        return InterpolationMode(self.interpolation)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``(..., 3, H, W)`` → float ``(..., 3, H, W)``, scaled and normalised.

        ``(x / 255 - mean) / std`` as one multiply and one add, into a new contiguous
        tensor whatever the input's layout (a decoded image is a height-width-channel
        view): measured 0.08 ms against 0.30 for a 224 px crop, equal within 1e-7, and
        a batch of such inputs stacks three times faster.
        """
        x = image.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return x.mul_(1.0 / (255.0 * std)).add_(-mean / std)

    def resize_crop(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``(3, H, W)`` → uint8 ``(3, crop, crop)``: shorter side resize, centre crop."""
        if self.mode != "center_crop":
            raise ValueError(f"resize_crop expects mode 'center_crop', got {self.mode!r}")
        _, h, w = image.shape
        if (max(h, w) > WINDOW_ASPECT_RATIO * min(h, w)
                and self.resize_size * max(h, w) // min(h, w) > self.crop_size):
            return self._resize_crop_window(image)
        image = F.resize(image, [self.resize_size], interpolation=self.interpolation_mode,
                         antialias=True)
        return F.center_crop(image, [self.crop_size, self.crop_size])

    def _resize_crop_window(self, image: torch.Tensor) -> torch.Tensor:
        """`resize_crop` for a long, thin ``(3, H, W)``: resize only the window the crop keeps."""
        _, h, w = image.shape
        axis = -2 if h > w else -1  # the long axis
        n, short = max(h, w), min(h, w)
        new_long = int(self.resize_size * n / short)  # as torchvision's resize computes it
        crop = self.crop_size
        top = int(round((new_long - crop) / 2.0))  # the centre crop's first index, long axis
        step = n / new_long  # input pixels per output pixel (< 1: upsampling)
        # The antialiased filter reaches interp_size/2 input pixels, widened when shrinking.
        reach = (2.0 if self.interpolation == "bicubic" else 1.0) * max(step, 1.0)
        margin = math.ceil(reach) + 2
        start = _aligned_start(max(0, math.floor(top * step) - margin), new_long, n,
                               reach=math.ceil(2 * crop * max(step, 1.0)))
        stop = min(n, math.ceil((top + crop) * step) + margin)
        offset = round(start * new_long / n)  # whole-image output index of the window's first
        count = top - offset + crop  # output pixels needed along the long axis
        if count == stop - start:
            # torch skips an axis whose input and output sizes are equal, whatever the
            # scale; one more output pixel (never used) keeps the resize.
            count += 1
        window = image.narrow(axis, start, stop - start)
        size = [count, self.resize_size] if axis == -2 else [self.resize_size, count]
        scale = new_long / n  # the whole image's scale, not the window's own size ratio
        scales = (scale, None) if axis == -2 else (None, scale)
        resized = _resize_at_scale(window, size, scales, self.interpolation)  # (3, ...)
        return F.center_crop(resized.narrow(axis, top - offset, crop), [crop, crop])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``(3, H, W)`` RGB → float ``(3, crop, crop)`` model input."""
        return self.normalize(self.resize_crop(image))


def _aligned_start(start: int, new_long: int, n: int, *, reach: int,
                   candidates: int = 64) -> int:
    """A window start at or before `start` whose output position is a whole pixel, or nearest.

    The window's first input pixel lands at output ``start * new_long / n``. When that is
    an integer, the window's output grid is the whole image's and the result is exact:
    starts that are multiples of ``n / gcd(n, new_long)`` (every start for an integer
    scale). One is taken if it costs at most `reach` more pixels; otherwise the best of
    the last `candidates` starts, off by less than half an output pixel.
    """
    period = n // math.gcd(n, new_long)
    if start - start // period * period <= reach:
        return start // period * period

    def misalignment(s: int) -> int:
        r = (s * new_long) % n
        return min(r, n - r)

    return min(range(start, max(0, start - candidates) - 1, -1), key=misalignment)


def _resize_at_scale(image: torch.Tensor, size: list[int], scales: tuple[float | None, ...],
                     interpolation: str) -> torch.Tensor:
    """Antialiased resize of ``(3, h, w)`` to ``size`` with explicit per-axis scales.

    torchvision's resize derives the scale from the sizes; a window cut from a larger
    image must keep the larger image's scale, which only the aten op accepts.
    """
    op = (torch.ops.aten._upsample_bicubic2d_aa if interpolation == "bicubic"
          else torch.ops.aten._upsample_bilinear2d_aa)
    x = image.unsqueeze(0)  # (1, 3, h, w)
    if x.dtype != torch.uint8 or x.device.type == "cpu":  # torch's own uint8 kernel, as F.resize
        return op(x, size, False, *scales)[0]
    out = op(x.float(), size, False, *scales)
    return out.clamp_(0, 255).round_().to(torch.uint8)[0]
