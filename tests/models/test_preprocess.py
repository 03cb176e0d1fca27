"""Preprocessing.resize_crop: ordinary photos unchanged, long thin images bounded and faithful.

The reference is the whole-image path (torchvision resize of the shorter side, then
centre crop), which is what resize_crop did for every shape before the window path.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from models.preprocess import WINDOW_ASPECT_RATIO, Preprocessing


def reference(pre: Preprocessing, image: torch.Tensor) -> torch.Tensor:
    """The unbounded path: resize the whole image, then crop the centre."""
    resized = F.resize(image, [pre.resize_size], interpolation=pre.interpolation_mode,
                       antialias=True)
    return F.center_crop(resized, [pre.crop_size, pre.crop_size])


def noise(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """uint8 (3, h, w), channels-last like a decoded image; noise is the worst case for
    any sub-pixel shift."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g).permute(2, 0, 1)


def mad(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.int() - b.int()).abs().float().mean())


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("hw", [(300, 451), (480, 640), (1080, 1920), (500, 1000), (1000, 500),
                                (37, 50), (64, 64)])
def test_ordinary_photos_are_bit_identical(hw: tuple[int, int], interpolation: str) -> None:
    assert max(hw) <= WINDOW_ASPECT_RATIO * min(hw)
    pre = Preprocessing(interpolation=interpolation)
    image = noise(*hw)
    assert torch.equal(pre.resize_crop(image), reference(pre, image))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(("hw", "tolerance"), [
    ((3000, 8), 0.0), ((8, 3000), 0.0), ((5000, 1), 0.0), ((1, 5000), 0.0),  # integer scale
    ((1000, 300), 0.0), ((257, 1000), 0.0),  # a whole-pixel start within reach
    ((3001, 7), 0.1), ((2372, 224), 3.0), ((7299, 213), 3.0),  # nearest start: sub-pixel shift
])
def test_thin_images_match_the_whole_image_resize(hw: tuple[int, int], tolerance: float,
                                                  interpolation: str) -> None:
    pre = Preprocessing(interpolation=interpolation)
    image = noise(*hw)
    out = pre.resize_crop(image)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    assert mad(out, reference(pre, image)) <= tolerance


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("tall", [True, False])
def test_extreme_shapes_are_bounded_and_match_a_moderate_reference(tall: bool,
                                                                   interpolation: str) -> None:
    # 8 x 6,000,000: the whole-image path asks for 256 x 192,000,000 x 3 bytes (~150 GB).
    # Its centre 8 x 3000 is a moderate image with the same scale (8 → 256) and the same
    # centre, so the crop of the extreme image must equal the crop of the moderate one.
    pre = Preprocessing(interpolation=interpolation)
    n, m = 6_000_000, 3000
    centre = noise(m, 8, seed=1)  # (3, 3000, 8)
    big = torch.zeros((3, n, 8), dtype=torch.uint8)
    big[:, (n - m) // 2:(n + m) // 2] = centre
    if not tall:
        centre, big = centre.transpose(1, 2), big.transpose(1, 2)  # (3, 8, 3000), (3, 8, 6M)
    expected = reference(pre, centre)
    started = time.perf_counter()
    out = pre.resize_crop(big)
    elapsed = time.perf_counter() - started
    assert out.shape == (3, 224, 224)
    assert mad(out, expected) <= 0.5
    assert elapsed < 0.5, f"resize_crop of {tuple(big.shape)} took {elapsed:.2f}s"


@pytest.mark.parametrize("hw", [(65_000, 1), (1, 65_000), (750_000, 64), (100_000, 3)])
def test_work_is_bounded_by_the_crop(hw: tuple[int, int]) -> None:
    # 1 x 65,000 took 40 s on the whole-image path; 64 x 750,000 needed ~2.3 GB.
    pre = Preprocessing()
    image = torch.full((3, *hw), 7, dtype=torch.uint8)
    started = time.perf_counter()
    out = pre(image)
    assert time.perf_counter() - started < 0.5
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32


def test_window_path_for_small_resize_sizes_and_tiny_images() -> None:
    # The window path needs the resized long side to exceed the crop; otherwise the
    # whole-image path is already small. A resize side below the crop pads, as before.
    for pre in (Preprocessing(crop_size=64, resize_size=64), Preprocessing(crop_size=224,
                                                                            resize_size=60)):
        for hw in ((1, 3), (3, 1), (2, 5), (40, 7), (7, 1000)):
            image = noise(*hw)
            assert mad(pre.resize_crop(image), reference(pre, image)) <= 0.5, (pre, hw)


@pytest.mark.parametrize("short", [480, 500, 960, 1920])
def test_a_reduced_jpeg_decode_is_only_ever_downsampled(short: int) -> None:
    """Decoded to keep `decode_size`, a JPEG whose shorter side lands just above 2, 4 or 8
    times the crop still reaches the resize at >= 256 px, and its preprocessed input
    stays close to the full decode's (equal where no reduction applies)."""
    import io

    from PIL import Image

    from models.imaging import decode_image

    pp = Preprocessing()  # center_crop: resize 256, crop 224
    assert pp.decode_size == 256 and Preprocessing(mode="letterbox").decode_size == 224
    y, x = np.mgrid[0:short, 0:short * 4 // 3]
    smooth = np.stack([128 + 100 * np.sin(x / 37), 128 + 100 * np.cos(y / 23),
                       (x + y) % 256], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(smooth).save(buf, "JPEG", quality=92)
    reduced = decode_image(buf.getvalue(), target_size=pp.decode_size)
    assert min(reduced.tensor.shape[1:]) >= pp.resize_size
    full = decode_image(buf.getvalue())
    a, b = (pp.normalize(pp.resize_crop(d.tensor)) for d in (reduced, full))
    if reduced.tensor.shape == full.tensor.shape:
        assert torch.equal(a, b)
    else:
        assert (a - b).abs().mean() < 0.05, (a - b).abs().mean()
