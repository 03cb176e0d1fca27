"""Every geometric augmentation moves the boxes exactly as it moves the pixels."""

from __future__ import annotations

import random

import pytest
import torch

from training.detection.augment import (
    DetectionAugment,
    color_jitter,
    hflip,
    mosaic,
    random_scale_translate,
)

# Object colours, distinguishable after thresholding (the pad grey 114 matches none).
COLOURS = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)]


def _sample(h: int, w: int, rect: tuple[int, int, int, int], colour=(1, 1, 1), label: int = 0):
    image = torch.zeros((3, h, w), dtype=torch.uint8)
    x1, y1, x2, y2 = rect
    for c, on in enumerate(colour):
        image[c, y1:y2, x1:x2] = 255 * on
    return image, torch.tensor([rect], dtype=torch.float32), torch.tensor([label])


def _pixel_bbox(image: torch.Tensor, colour=(1, 1, 1)) -> torch.Tensor | None:
    """Edge-coordinate xyxy of the pixels of one colour, or None if there are none."""
    mask = torch.ones(image.shape[1:], dtype=torch.bool)
    for c, on in enumerate(colour):
        mask &= (image[c] > 127) if on else (image[c] <= 127)
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if ys.numel() == 0:
        return None
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def _assert_box_bounds_object(image, box, colour=(1, 1, 1), tol: float = 1.5) -> None:
    found = _pixel_bbox(image, colour)
    assert found is not None, "the object's pixels vanished but its box was kept"
    assert torch.allclose(found, box, atol=tol), f"pixels at {found.tolist()}, box {box.tolist()}"


def test_hflip_mirrors_box_with_pixels() -> None:
    image, boxes, labels = hflip(_sample(60, 100, (10, 5, 30, 50)))
    assert boxes.tolist() == [[70, 5, 90, 50]]
    _assert_box_bounds_object(image, boxes[0], tol=0)
    assert labels.tolist() == [0]


def test_random_scale_translate_boxes_follow_the_object() -> None:
    kept = dropped = 0
    for seed in range(16):
        sample = _sample(200, 300, (200, 40, 290, 190))  # near the right edge: often cut
        image, boxes, labels = random_scale_translate(sample, 128, scale=(0.5, 1.8),
                                                      translate=0.3, rng=random.Random(seed))
        assert image.shape == (3, 128, 128)
        if boxes.shape[0]:
            _assert_box_bounds_object(image, boxes[0])
            assert labels.tolist() == [0]
            kept += 1
        else:  # dropped only when mostly pushed out: < 25% visible even at the largest zoom
            found = _pixel_bbox(image)
            area = 0 if found is None else float((found[2] - found[0]) * (found[3] - found[1]))
            assert area < 0.25 * (90 * 150) * (128 / 300 * 1.8) ** 2
            dropped += 1
    assert kept >= 8


def test_mosaic_boxes_follow_each_object() -> None:
    kept = 0
    for seed in range(6):
        samples = [_sample(120, 160, (20 + 10 * k, 30, 90 + 10 * k, 100), COLOURS[k], label=k)
                   for k in range(4)]
        image, boxes, labels = mosaic(samples, 96, rng=random.Random(seed))
        assert image.shape == (3, 192, 192)
        assert boxes.shape[0] == labels.shape[0]
        for box, label in zip(boxes, labels, strict=True):
            _assert_box_bounds_object(image, box, COLOURS[int(label)])
            kept += 1
    assert kept >= 12  # most objects survive a mosaic


@pytest.mark.parametrize("seed", range(6))
def test_full_pipeline_with_mosaic_keeps_boxes_on_objects(seed: int) -> None:
    random.seed(seed)
    aug = DetectionAugment(128, mosaic_p=1.0 if seed % 2 else 0.0, hue=0.0, saturation=0.0,
                           brightness=0.0)
    samples = [_sample(100, 140, (30, 20, 110, 80), COLOURS[k], label=k) for k in range(4)]
    image, boxes, labels = aug(samples[0], lambda: samples[1:])
    assert image.shape == (3, 128, 128) and image.dtype == torch.uint8
    for box, label in zip(boxes, labels, strict=True):
        _assert_box_bounds_object(image, box, COLOURS[int(label)], tol=2.0)


def test_color_jitter_changes_colours_not_geometry() -> None:
    image, _, _ = _sample(40, 40, (5, 5, 20, 30))
    image[0] = 128  # make it colourful so that hue/saturation matter
    out = color_jitter(image, hue=0.1, saturation=0.5, brightness=0.3, rng=random.Random(1))
    assert out.shape == image.shape and out.dtype == torch.uint8
    assert not torch.equal(out, image)
