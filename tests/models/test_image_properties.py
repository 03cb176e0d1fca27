"""Property tests (hypothesis) for decode → preprocess → predictor, on any image shape.

Images are drawn with a short side from 1 px, aspect ratios from 1:1 to 1:100,000,
every pixel mode a decoder hands over (1, L, LA, P with transparency, RGB, RGBA,
I;16, CMYK) and all eight EXIF orientations, then encoded as a real file. For each:

- the decoded size is the upright original's;
- the classifier's input is exactly its crop size and its output one row of scores;
- the detector's input is its square, and every box lies inside the original,
  upright image; the letterboxed area maps back onto the whole image;
- each step is done within a generous time, and the process' peak memory stays
  bounded over the whole run.

The classifier preprocesses as the served ImageNet models do (resize 256, crop 224),
where a thin image's whole-image resize needs gigabytes; a one-layer random model
keeps its forward cheap. The detector is a small random-weight `Detector`.
"""

from __future__ import annotations

import io
import resource
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image
from torch import nn

from models.classification.predictor import ClassificationPredictor
from models.detection import Detector
from models.detection.predictor import DetectionPredictor
from models.export import Manifest
from models.imaging import decode_image
from models.preprocess import Preprocessing

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:torchvision"),
              pytest.mark.usefixtures("one_thread")]

MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "CMYK"]
MAX_PIXELS = 300_000  # per drawn image: keeps an example well under a second
STEP_LIMIT_S = 3.0  # decode + both predictors, per example; generous for a shared box
PEAK_GROWTH_LIMIT_MB = 500
CLASSIFY_SIZE, DETECT_SIZE = 224, 64
SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that turn the stored image by 90 degrees




class TinyClassifier(nn.Module):
    """(B, 3, H, W) → logits (B, 3): one strided convolution, pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 8, stride=8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def predictors() -> tuple[ClassificationPredictor, DetectionPredictor]:
    torch.manual_seed(0)
    pre = Preprocessing(crop_size=CLASSIFY_SIZE, resize_size=256)
    classifier = ClassificationPredictor(
        TinyClassifier(),
        Manifest(task="classify", architecture={"name": "tiny"}, labels=["a", "b", "c"],
                 preprocessing=pre.to_dict()))
    model = Detector("efficientnet_lite0", 2, width=16, img_size=DETECT_SIZE,
                     backbone_weights=None)
    detector = DetectionPredictor(
        model, Manifest(task="detect", architecture={"name": "detector",
                                                     "args": model.model_args},
                        labels=["x", "y"], preprocessing=model.preprocessing.to_dict()))
    return classifier, detector


@st.composite
def shapes(draw: st.DrawFn) -> tuple[int, int]:
    """(width, height): a short side from 1 px, a long side up to 100,000 times it."""
    short = draw(st.integers(1, 64))
    ratio = draw(st.one_of(st.just(1.0), st.floats(1.0, 100_000.0),
                           st.floats(1.0, 8.0)))  # both extremes and ordinary photos
    long = max(short, min(round(short * ratio), MAX_PIXELS // short))
    return (short, long) if draw(st.booleans()) else (long, short)


def make_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    gray = rgb[..., 0]
    if mode == "1":
        return Image.fromarray(gray > 127)
    if mode == "L":
        return Image.fromarray(gray)
    if mode == "LA":
        return Image.merge("LA", [Image.fromarray(gray), Image.fromarray(rgb[..., 1])])
    if mode == "P":
        return Image.fromarray(gray // 16).convert("P")  # 16 colours, index 0 transparent
    if mode == "RGBA":
        return Image.fromarray(np.dstack([rgb, rgb[..., :1]]))
    if mode == "I;16":
        return Image.fromarray(gray.astype(np.uint16) * 257)
    if mode == "CMYK":
        return Image.fromarray(rgb).convert("CMYK")
    return Image.fromarray(rgb)


def encode(image: Image.Image, orientation: int, *, jpeg: bool) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    buf = io.BytesIO()
    if jpeg:
        image.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    elif image.mode == "CMYK":
        image.save(buf, "TIFF", exif=exif.tobytes())  # PNG has no CMYK
    else:
        extra = {"transparency": 0} if image.mode == "P" else {}
        image.save(buf, "PNG", exif=exif.tobytes(), **extra)
    return buf.getvalue()


@pytest.mark.slow  # 150 generated images through two predictors: ~5 s
@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(shape=shapes(), mode=st.sampled_from(MODES), orientation=st.integers(1, 8),
       jpeg=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_any_image_decodes_upright_and_predicts_within_bounds(
        predictors, shape: tuple[int, int], mode: str, orientation: int, jpeg: bool,
        seed: int) -> None:
    classifier, detector = predictors
    width, height = shape
    # JPEG holds only L, RGB and CMYK, and at most 65,500 px a side.
    jpeg = jpeg and mode in ("L", "RGB", "CMYK") and max(width, height) <= 65_500
    blob = encode(make_image(mode, width, height, seed), orientation, jpeg=jpeg)
    upright = (height, width) if orientation in SWAPS_AXES else (width, height)

    started = time.perf_counter()
    decoded = decode_image(blob, target_size=DETECT_SIZE)
    assert (decoded.width, decoded.height) == upright
    assert decoded.tensor.dtype == torch.uint8 and decoded.tensor.shape[0] == 3
    if not jpeg:  # lossless formats are decoded at full size
        assert tuple(decoded.tensor.shape[1:]) == upright[::-1]

    x, _ = classifier.preprocess(decoded.tensor)
    assert x.shape == (3, CLASSIFY_SIZE, CLASSIFY_SIZE) and torch.isfinite(x).all()
    (scores,) = classifier.postprocess(classifier.forward(x[None]), [None], top_k=3)
    assert len(scores) == 3 and all(0 <= s.score <= 1 for s in scores)

    x, meta = detector.preprocess(decoded.tensor, original_size=(decoded.width,
                                                                 decoded.height))
    assert x.shape == (3, DETECT_SIZE, DETECT_SIZE)
    (dets,) = detector.postprocess(detector.forward(x[None]), [meta], conf=0.0, max_det=20)
    assert dets, "conf=0 keeps at least one box"
    w, h = decoded.width, decoded.height
    for d in dets:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h, (d.box, w, h)
    # The letterboxed image's own area maps back onto the whole original.
    lb = meta.letterbox
    placed = torch.tensor([[lb.pad_left, lb.pad_top, lb.pad_left + lb.new_w,
                            lb.pad_top + lb.new_h]], dtype=torch.float32)
    assert meta.to_original(placed)[0].tolist() == pytest.approx([0, 0, w, h], rel=1e-5)
    elapsed = time.perf_counter() - started
    assert elapsed < STEP_LIMIT_S, f"{mode} {width}x{height}: {elapsed:.2f}s"


def test_peak_memory_stays_bounded_on_the_widest_shapes(predictors) -> None:
    # The shapes that used to explode (1 x 100,000 resized to a short side of 256 is
    # 256 x 25,600,000 x 3 bytes, ~20 GB), in sequence; ru_maxrss is the high-water mark.
    classifier, detector = predictors
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for width, height in ((1, 100_000), (100_000, 1), (3, 100_000), (100_000, 2)):
        blob = encode(make_image("RGB", width, height, 0), 1, jpeg=False)
        decoded = decode_image(blob)
        classifier.predict([decoded.tensor])
        detector.predict([decoded.tensor], conf=0.0, max_det=5)
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    assert growth < PEAK_GROWTH_LIMIT_MB, f"peak RSS grew by {growth:.0f} MB"
