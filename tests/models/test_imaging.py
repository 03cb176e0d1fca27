"""decode_image: every supported format, the odd pixel modes, bad input, bombs, fast paths.

Every image is made in memory from a real photo (skimage's chelsea, 451x300, not
square so that a lost rotation shows up as a wrong size).
"""

from __future__ import annotations

import io
import itertools
import struct
import time
import warnings
import zlib
from collections.abc import Iterable

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image, ImageFile, ImageOps
from skimage import data as skdata
from torchvision.transforms.v2 import functional as F

from models.errors import ImageDecodeError, ImageTooLargeError, UnsupportedImageFormatError
from models.imaging import (
    SUPPORTED_FORMATS,
    DecodedImage,
    _decode_jpeg_torchvision,
    _decode_pil,
    decode_image,
)

# torchvision 0.29 warns on every decode_jpeg call that its codecs are deprecated.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torchvision")

REF = skdata.chelsea()  # (300, 451, 3) uint8
H, W = REF.shape[:2]


def encode(image: Image.Image | np.ndarray, fmt: str, **kwargs) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def hwc(tensor: torch.Tensor) -> np.ndarray:
    """uint8 (3, H, W) tensor → (H, W, 3) int array, for arithmetic."""
    assert tensor.dtype == torch.uint8 and tensor.ndim == 3 and tensor.shape[0] == 3
    return tensor.permute(1, 2, 0).numpy().astype(np.int32)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


def png(width: int, height: int, bit_depth: int, color_type: int, rows: Iterable[bytes]) -> bytes:
    """A PNG written by hand: for 16-bit RGB (PIL cannot write it) and for bombs."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    comp = zlib.compressobj()
    idat = b"".join(comp.compress(b"\x00" + row) for row in rows) + comp.flush()  # filter 0
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def with_orientation(image: np.ndarray, fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    extra = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    return encode(image, fmt, exif=exif.tobytes(), **extra)


# -- formats and pixel modes ---------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "kwargs", "tolerance"), [
    ("JPEG", {"quality": 95}, 3.0),
    ("JPEG", {"quality": 95, "progressive": True}, 3.0),
    ("PNG", {}, 0.0),
    ("WEBP", {"quality": 95}, 3.0),
    ("WEBP", {"lossless": True}, 0.0),
    ("BMP", {}, 0.0),
    ("TIFF", {}, 0.0),
    ("TIFF", {"compression": "tiff_deflate"}, 0.0),
    ("GIF", {}, 8.0),  # 256-colour palette
])
def test_each_format_decodes_to_the_reference(fmt: str, kwargs: dict, tolerance: float) -> None:
    blob = encode(REF, fmt, **kwargs)
    out = decode_image(blob)
    assert isinstance(out, DecodedImage)
    assert (out.format, out.width, out.height, out.num_bytes) == (fmt, W, H, len(blob))
    assert tuple(out.tensor.shape) == (3, H, W) and out.scale == (1.0, 1.0)
    assert mad(hwc(out.tensor), REF) <= tolerance


def test_grayscale_and_palette_become_rgb() -> None:
    gray = np.asarray(Image.fromarray(REF).convert("L"))
    for blob in (encode(gray, "PNG"), encode(gray, "JPEG", quality=95)):
        out = hwc(decode_image(blob).tensor)
        assert out.shape == (H, W, 3)
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
        assert mad(out[..., 0], gray) < 2
    palette = Image.fromarray(REF).quantize(256)
    out = decode_image(encode(palette, "PNG"))
    assert mad(hwc(out.tensor), np.asarray(palette.convert("RGB"))) == 0


def test_cmyk_jpeg_keeps_its_colours() -> None:
    blob = encode(Image.fromarray(REF).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(blob)).mode == "CMYK"
    out = hwc(decode_image(blob).tensor)
    assert mad(out, REF) < 3
    assert mad(out, 255 - REF) > 50  # not inverted


def test_16bit_png_maps_to_8bit_not_white() -> None:
    gray16 = REF[..., 0].astype(np.uint16) * 257  # full 16-bit range
    out = hwc(decode_image(encode(gray16, "PNG")).tensor)
    assert (out == REF[..., :1]).all()  # the high byte, exactly
    assert out.mean() < 200  # PIL's plain convert("RGB") would give 255 nearly everywhere
    tiff = hwc(decode_image(encode(gray16, "TIFF")).tensor)
    assert (tiff == REF[..., :1]).all()

    rgb16 = REF.astype(np.uint16) * 256 + 200  # high byte = REF; the low byte must not leak in
    blob = png(W, H, 16, 2, (row.astype(">u2").tobytes() for row in rgb16))
    out = decode_image(blob)
    assert out.format == "PNG" and (hwc(out.tensor) == REF).all()


def test_transparency_is_composited_on_white() -> None:
    alpha = np.full((H, W), 255, np.uint8)
    alpha[:, : W // 3] = 0  # left third fully transparent
    alpha[:, W // 3 : 2 * W // 3] = 128  # middle third half transparent
    rgba = np.dstack([REF, alpha])
    out = hwc(decode_image(encode(rgba, "PNG")).tensor)
    assert (out[:, : W // 3] == 255).all()
    assert (out[:, 2 * W // 3 :] == REF[:, 2 * W // 3 :]).all()
    middle = REF[:, W // 3 : 2 * W // 3].astype(np.int32)
    expected = (middle * 128 + 255 * 127) / 255
    assert np.abs(out[:, W // 3 : 2 * W // 3] - expected).max() <= 1

    gray_alpha = Image.fromarray(np.dstack([REF[..., 0], alpha]), "LA")
    out = hwc(decode_image(encode(gray_alpha, "PNG")).tensor)
    assert (out[:, : W // 3] == 255).all() and (out[:, -1, 0] == REF[:, -1, 0]).all()

    quantized = Image.fromarray(REF).quantize(255)  # indices 0..254
    pixels = np.asarray(quantized) + 1  # free index 0 ...
    pixels[:10] = 0  # ... for a transparent band along the top
    palette = Image.fromarray(pixels.astype(np.uint8), "P")
    palette.putpalette([0, 0, 0] + quantized.getpalette()[: 255 * 3])
    out = hwc(decode_image(encode(palette, "PNG", transparency=0)).tensor)
    assert (out[:10] == 255).all()
    assert mad(out[10:], np.asarray(quantized.convert("RGB"))[10:]) == 0


def test_animated_gif_gives_the_first_frame() -> None:
    frames = [Image.fromarray(REF), Image.fromarray(255 - REF), Image.new("RGB", (W, H))]
    blob = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(blob)).n_frames == 3
    out = decode_image(blob)
    assert (out.format, out.width, out.height) == ("GIF", W, H)
    assert mad(hwc(out.tensor), REF) < 8


def test_mpo_reads_as_its_first_jpeg_frame() -> None:
    blob = encode(Image.fromarray(REF), "MPO", save_all=True,
                  append_images=[Image.fromarray(255 - REF)], quality=95)
    assert Image.open(io.BytesIO(blob)).format == "MPO"
    out = decode_image(blob)
    assert out.format == "JPEG" and mad(hwc(out.tensor), REF) < 3


# -- EXIF orientation ------------------------------------------------------------------------

@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_exif_orientation_matches_pil_exif_transpose(fmt: str, orientation: int) -> None:
    blob = with_orientation(REF[::3, ::3], fmt, orientation)  # (100, 151): small, not square
    reference = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(blob))).convert("RGB"))
    out = decode_image(blob)
    assert (out.height, out.width) == reference.shape[:2]
    assert tuple(out.tensor.shape[1:]) == reference.shape[:2]
    assert np.abs(hwc(out.tensor) - reference).max() <= 1


@pytest.mark.parametrize(("orientation", "turns"), [(6, 1), (8, -1)])
@pytest.mark.parametrize("target_size", [None, 64])  # 64: the JPEG draft path
def test_rotated_photo_comes_out_upright(orientation: int, turns: int,
                                          target_size: int | None) -> None:
    # A camera held sideways stores the scene turned by 90 degrees and says so in EXIF.
    stored = np.ascontiguousarray(np.rot90(REF, k=turns))  # (451, 300, 3)
    out = decode_image(with_orientation(stored, "JPEG", orientation), target_size=target_size)
    assert (out.width, out.height) == (W, H)
    upright = hwc(out.tensor)
    if target_size is not None:
        assert tuple(out.tensor.shape[1:]) == (75, 113)  # 1/4 scale, shorter side >= 64
        reference = hwc(F.resize(torch.from_numpy(REF).permute(2, 0, 1), [75, 113],
                                 antialias=True))
        assert mad(upright, reference) < 4
    else:
        assert mad(upright, REF) < 3


# -- bad input -------------------------------------------------------------------------------

def test_empty_bytes() -> None:
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF"])
def test_truncated_image_is_refused(fmt: str) -> None:
    blob = encode(REF, fmt)
    with pytest.raises(ImageDecodeError, match=f"expected a (complete|readable) .*{fmt}|header"):
        decode_image(blob[: len(blob) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_jpeg_says_truncated() -> None:
    blob = encode(REF, "JPEG", quality=90)
    with pytest.raises(ImageDecodeError, match="complete JPEG.*truncated"):
        decode_image(blob[: len(blob) // 2])


def test_random_bytes_and_text_are_not_images() -> None:
    noise = np.random.default_rng(0).bytes(4096)
    with pytest.raises(ImageDecodeError, match="no image decoder recognises") as info:
        decode_image(noise)
    assert "JPEG, PNG" in str(info.value)
    with pytest.raises(ImageDecodeError, match="bytes of text"):
        decode_image(b"name,label\ncat.jpg,cat\n" * 20)


@pytest.mark.parametrize(("blob", "name"), [
    (encode(Image.fromarray(REF).resize((64, 64)), "ICO"), "ICO"),
    (encode(REF, "TGA"), "TGA"),
    (encode(REF, "PPM"), "PPM"),
    (encode(REF, "PDF"), "PDF"),
    (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
     "SVG"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "HEIF"),
])
def test_images_in_other_formats_are_unsupported(blob: bytes, name: str) -> None:
    with pytest.raises(UnsupportedImageFormatError) as info:
        decode_image(blob)
    message = str(info.value)
    assert f"got {name}" in message and ", ".join(SUPPORTED_FORMATS) in message
    assert info.value.reason == "unsupported"


def test_byte_limit() -> None:
    blob = encode(REF, "PNG")
    with pytest.raises(ImageTooLargeError, match=f"at most 1,000 bytes; got {len(blob):,}"):
        decode_image(blob, max_bytes=1000)
    assert decode_image(blob, max_bytes=len(blob)).num_bytes == len(blob)


# -- decompression bombs ---------------------------------------------------------------------

def test_pixel_limit_is_checked_before_decoding() -> None:
    # The header claims 8000x8000 but holds no pixel data: decoding it would fail as
    # truncated, so a too-large error proves the header alone decided.
    blob = png(8000, 8000, 8, 2, [])
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="at most 50,000,000 pixels; got 8000x8000"):
        decode_image(blob)
    assert time.perf_counter() - start < 0.5
    with pytest.raises(ImageTooLargeError, match="at most 100,000 pixels; got 451x300"):
        decode_image(encode(REF, "JPEG"), max_pixels=100_000)


@pytest.mark.parametrize("side", [20_000, 100_000])
def test_bomb_beyond_pils_own_limit_is_refused(side: int) -> None:
    # 20000: a real 1-bit PNG, ~50 kB of compressed zeros that would decode to 400 MB.
    # 100000: the header alone claims 10 billion pixels.
    rows = itertools.repeat(bytes(side // 8), side if side == 20_000 else 0)
    blob = png(side, side, 1, 0, rows)
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="at most 50,000,000 pixels") as info:
        decode_image(blob)
    assert time.perf_counter() - start < 0.5
    assert f"{side * side}" in str(info.value)  # PIL's message names the real size


def test_pil_globals_are_left_alone() -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    decode_image(encode(REF, "JPEG"), target_size=64)
    with pytest.raises(ImageTooLargeError):
        decode_image(png(20_000, 20_000, 1, 0, []))
    after = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    assert after == before


# -- fast JPEG paths ("decode paths agree") --------------------------------------------------

@pytest.fixture(scope="module")
def large_jpeg() -> bytes:
    """A 1800x1200 photo-like JPEG: chelsea upscaled, with sensor-like noise."""
    big = np.asarray(Image.fromarray(REF).resize((1800, 1200), Image.Resampling.BICUBIC))
    noise = np.random.default_rng(0).normal(0, 4, big.shape)
    return encode(np.clip(big + noise, 0, 255).astype(np.uint8), "JPEG", quality=90)


def plain_pil(blob: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(blob)).convert("RGB"))


def test_decode_paths_agree(large_jpeg: bytes) -> None:
    reference = plain_pil(large_jpeg)  # (1200, 1800, 3)

    full = decode_image(large_jpeg)  # torchvision
    assert np.abs(hwc(full.tensor) - reference).max() <= 1

    drafted = decode_image(large_jpeg, target_size=224)  # PIL draft, 1/4 scale
    assert (drafted.width, drafted.height) == (1800, 1200)
    assert tuple(drafted.tensor.shape) == (3, 300, 450) and drafted.scale == (4.0, 4.0)
    assert min(drafted.tensor.shape[1:]) >= 224

    # As preprocessing will see them: both resized to a shorter side of 224.
    def to_224(image: torch.Tensor) -> np.ndarray:
        return hwc(F.resize(image, [224], antialias=True))

    reference_224 = to_224(torch.from_numpy(reference).permute(2, 0, 1))
    assert mad(to_224(full.tensor), reference_224) < 0.5
    assert mad(to_224(drafted.tensor), reference_224) < 2.5


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_torchvision_and_pil_jpeg_decoders_agree(mode: str) -> None:
    blob = encode(Image.fromarray(REF).convert(mode), "JPEG", quality=90)
    fast = _decode_jpeg_torchvision(blob)
    assert fast is not None
    slow = _decode_pil(Image.open(io.BytesIO(blob)), "JPEG")
    assert np.abs(hwc(fast) - hwc(slow)).max() <= 1


def test_draft_only_when_the_image_is_at_least_twice_the_target(large_jpeg: bytes) -> None:
    assert decode_image(large_jpeg, target_size=640).tensor.shape[1:] == (1200, 1800)
    assert decode_image(large_jpeg, target_size=600).tensor.shape[1:] == (600, 900)
    assert decode_image(large_jpeg, target_size=100).tensor.shape[1:] == (150, 225)  # 1/8


def test_no_warnings_on_any_path(large_jpeg: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        for target in (None, 224):
            decode_image(large_jpeg, target_size=target)
        decode_image(encode(REF, "PNG"))
