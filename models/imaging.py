"""Uploaded image bytes → an upright RGB uint8 tensor, or a domain error.

`decode_image` is pure library code; the service runs it in a thread pool. It
never touches PIL's globals (``MAX_IMAGE_PIXELS``, ``LOAD_TRUNCATED_IMAGES``) or
the warning filters, so it is safe to call from many threads at once.

Decode paths, chosen by measurement (4000x3000 JPEG, one CPU core: PIL ~80 ms
of which ~35 ms is copying its buffer out, ``torchvision.io.decode_jpeg`` ~40 ms
with identical pixels, PIL draft to 1/8 scale ~15 ms):

- JPEG whose shorter side is at least ``2 * target_size``: PIL draft mode, i.e.
  libjpeg's DCT scaling by 1/2, 1/4 or 1/8, chosen so that the shorter side
  stays >= ``target_size``. The tensor is then smaller than the image; see
  `DecodedImage.scale`.
- Other JPEG: ``torchvision.io.decode_jpeg``. If it refuses the bytes, PIL
  decodes them (or gives the error), so this path is never stricter than PIL.
  torchvision 0.29 deprecates its codecs in favour of TorchCodec; the PIL path
  is the drop-in replacement (same pixels, tested).
- Everything else: PIL.

Choices every path shares:

- EXIF orientation is read by PIL (the tag that ``ImageOps.exif_transpose``
  uses) and applied to the tensor, so every path comes out upright.
- Transparency is composited on white: the colour under fully transparent
  pixels is arbitrary (often black), white is what a viewer shows.
- 16-bit samples keep their high byte (65535 → 255), as PIL does for 16-bit RGB.
- Animated GIF and WebP, multi-page TIFF and MPO: the first frame.
- Pixel limit: width * height from the header is checked before any pixel is
  decoded. PIL's own guard fires earlier, inside ``Image.open``, above
  ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (~179 MP); it is mapped to the same error,
  so the effective limit is the smaller of the two. Between 1x and 2x that
  limit PIL only emits a ``DecompressionBombWarning`` (silencing it would mean
  changing the process-wide warning filters from worker threads); where warnings
  are errors it is raised, and mapped like the error.
"""

from __future__ import annotations

import codecs
import io
import logging
from dataclasses import dataclass

import numpy as np
import torch
from PIL import ExifTags, Image
from torchvision.io import ImageReadMode, decode_jpeg

from models.errors import ImageDecodeError, ImageTooLargeError, UnsupportedImageFormatError

logger = logging.getLogger(__name__)

SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")

# PIL's format name → the name we report. MPO is a camera JPEG with extra frames
# (stereo pairs, depth maps); its first frame is the ordinary photo.
_PIL_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WEBP", "BMP": "BMP",
                "TIFF": "TIFF", "GIF": "GIF"}
_PIL_OPEN_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")  # MPO opens through JPEG
# What a folder of images is read as (training data, calibration images, val photos).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})

# EXIF orientations 5-8 swap the stored width and height.
_SWAPS_AXES = frozenset({5, 6, 7, 8})

_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class DecodedImage:
    """A decoded upload.

    Attributes:
        tensor: uint8 ``(3, h, w)`` RGB, upright. Equal to the image's size unless
            the JPEG draft path reduced it (then ``h, w`` are smaller than
            ``height, width``). For PIL paths it is a channels-last view of an
            ``(h, w, 3)`` buffer (no copy); call ``.contiguous()`` if a consumer
            needs NCHW memory.
        width: Width of the original upright image, in pixels.
        height: Height of the original upright image, in pixels.
        format: One of `SUPPORTED_FORMATS`.
        num_bytes: Size of the encoded upload.
    """

    tensor: torch.Tensor
    width: int
    height: int
    format: str
    num_bytes: int

    @property
    def scale(self) -> tuple[float, float]:
        """``(sx, sy)``: multiply tensor x, y by these to get original-image pixels.

        ``(1.0, 1.0)`` unless the tensor was decoded at reduced size.
        """
        return self.width / self.tensor.shape[-1], self.height / self.tensor.shape[-2]


def decode_image(data: bytes, *, max_pixels: int = 50_000_000, max_bytes: int | None = None,
                 target_size: int | None = None) -> DecodedImage:
    """Decode image bytes into an upright RGB uint8 tensor.

    Args:
        data: The encoded image.
        max_pixels: Refuse images whose width * height exceeds this, before decoding.
        max_bytes: Refuse uploads longer than this; ``None`` for no limit.
        target_size: The side the caller will resize to. When given, a large JPEG
            may be decoded at 1/2, 1/4 or 1/8 scale, keeping its shorter side
            >= ``target_size``; ``width``, ``height`` and ``scale`` tell the truth.

    Returns:
        The decoded image.

    Raises:
        ImageDecodeError: Empty, truncated, corrupt or not an image.
        UnsupportedImageFormatError: An image in a format not in `SUPPORTED_FORMATS`,
            or with samples that have no 8-bit RGB meaning (32-bit float).
        ImageTooLargeError: Over ``max_bytes`` or over ``max_pixels``.
        ValueError: A limit argument is not positive.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1 or None, got {max_bytes}")
    if target_size is not None and target_size < 1:
        raise ValueError(f"target_size must be >= 1 or None, got {target_size}")
    num_bytes = len(data)
    if max_bytes is not None and num_bytes > max_bytes:
        raise ImageTooLargeError(
            f"expected an upload of at most {max_bytes:,} bytes; got {num_bytes:,} bytes")
    if num_bytes == 0:
        raise ImageDecodeError(f"expected an image ({_supported()}); got an empty upload")

    with _open(data, max_pixels) as img:
        fmt = _PIL_FORMATS[img.format or ""]
        width, height = img.size
        if width < 1 or height < 1:
            raise ImageDecodeError(f"expected a {fmt} image with pixels; got size {width}x{height}")
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"expected an image of at most {max_pixels:,} pixels; got {width}x{height} = "
                f"{width * height:,} pixels")
        if fmt == "JPEG" and target_size is not None and min(width, height) // target_size >= 2:
            # libjpeg picks the largest of 1/2, 1/4, 1/8 that keeps both sides
            # >= target_size, so the later resize still downsamples.
            img.draft("RGB", (target_size, target_size))
            pixels = _decode_pil(img, fmt)
        elif fmt == "JPEG":
            pixels = _decode_jpeg_torchvision(data)
            if pixels is None:
                pixels = _decode_pil(img, fmt)
        else:
            pixels = _decode_pil(img, fmt)
        # After decoding: PIL finds a PNG's eXIf chunk only by reading the whole file.
        orientation = _exif_orientation(img)

    tensor = _orient(pixels, orientation)  # (3, h, w), upright
    if orientation in _SWAPS_AXES:
        width, height = height, width
    return DecodedImage(tensor=tensor, width=width, height=height, format=fmt,
                        num_bytes=num_bytes)


def _supported() -> str:
    return ", ".join(SUPPORTED_FORMATS)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Identify the bytes (header only; Image.open is lazy) as a supported format."""
    try:
        return Image.open(io.BytesIO(data), formats=_PIL_OPEN_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL's guard (or its warning, where warnings are errors) came first.
        raise ImageTooLargeError(
            f"expected an image of at most {max_pixels:,} pixels; got a larger one ({exc})"
        ) from exc
    except Image.UnidentifiedImageError:
        pass
    except MemoryError:
        raise
    except Exception as exc:  # any parser failure on untrusted bytes
        raise ImageDecodeError(
            f"expected a readable image header ({_supported()}); got one that fails to parse "
            f"({type(exc).__name__}: {exc})") from exc
    other = _identify(data)
    if other is not None:
        raise UnsupportedImageFormatError(
            f"expected an image in one of {_supported()}; got {other}")
    raise ImageDecodeError(f"expected an image ({_supported()}); got {_describe(data)}")


def _identify(data: bytes) -> str | None:
    """Name an image format we do not read, or None if the bytes are no known image."""
    head = data[:64]
    if head.startswith(b"%PDF-"):
        return "PDF"
    if head[4:8] == b"ftyp":
        return "AVIF" if b"avif" in head[8:32] else "HEIF"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL ")):
        return "JPEG XL"
    if _looks_like_text(data) and b"<svg" in data[:4096].lower():
        return "SVG"
    try:
        # All of PIL's readers, header only; a supported one failed above already.
        with Image.open(io.BytesIO(data)) as img:
            name = img.format
    except Exception:  # unidentifiable is the answer, not an error
        return None
    return None if name is None or name in _PIL_FORMATS else name


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    if b"\x00" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def _describe(data: bytes) -> str:
    kind = "text" if _looks_like_text(data) else "data that no image decoder recognises"
    return f"{len(data):,} bytes of {kind}"


def _decode_pil(img: Image.Image, fmt: str) -> torch.Tensor:
    """Decode the (first frame of the) image with PIL → uint8 ``(3, h, w)``, not oriented."""
    try:
        img.load()
    except MemoryError:
        raise
    except Exception as exc:  # any decoder failure on untrusted bytes
        raise ImageDecodeError(
            f"expected a complete {fmt} image; decoding failed ({type(exc).__name__}: {exc})"
        ) from exc
    rgb = _to_rgb_array(img, fmt)  # (h, w, 3)
    return torch.from_numpy(rgb).permute(2, 0, 1)


def _to_rgb_array(img: Image.Image, fmt: str) -> np.ndarray:
    """A loaded PIL image → writable uint8 ``(h, w, 3)`` RGB."""
    mode = img.mode
    if mode == "I" or mode.startswith("I;16"):
        # PIL's own convert("RGB") clips 16-bit values at 255, which turns
        # everything above 1/256 of full scale white. Keep the high byte instead.
        gray = np.clip(np.asarray(img), 0, 65535).astype(np.uint16)  # (h, w)
        return np.repeat((gray >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    if mode == "L" and not img.has_transparency_data:
        # The same pixels as convert("RGB"), without its RGBX buffer and the copy out of
        # it: a third less time and memory on a 48 MP greyscale scan or strip.
        return np.repeat(np.asarray(img)[:, :, None], 3, axis=2)
    if mode == "F":
        raise UnsupportedImageFormatError(
            f"expected 8- or 16-bit samples; got a {fmt} image of 32-bit floats (mode F), "
            "which has no standard 8-bit scale")
    try:
        if img.has_transparency_data:
            rgba = img.convert("RGBA")
            img = Image.new("RGB", img.size, _WHITE)
            img.paste(rgba, mask=rgba)  # alpha blend onto white
        elif mode != "RGB":
            img = img.convert("RGB")
    except ValueError as exc:
        raise UnsupportedImageFormatError(
            f"expected a {fmt} image that converts to RGB; got pixel mode {mode} ({exc})"
        ) from exc
    return np.array(img)  # np.array, not asarray: PIL hands over read-only bytes


def _decode_jpeg_torchvision(data: bytes) -> torch.Tensor | None:
    """uint8 ``(3, h, w)`` via libjpeg-turbo, not oriented; None if torchvision refuses."""
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)  # frombuffer needs writable
    try:
        return decode_jpeg(encoded, mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        logger.debug("torchvision could not decode a JPEG, trying PIL: %s", exc)
        return None


def _exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8) as ``ImageOps.exif_transpose`` reads it; 1 if none."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception as exc:  # bad metadata must not reject good pixels
        logger.debug("unreadable EXIF, assuming upright: %s", exc)
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def _orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to ``(3, H, W)``, as PIL's ``exif_transpose`` would."""
    if orientation == 2:  # mirrored
        return image.flip(-1)
    if orientation == 3:  # rotated 180
        return image.flip(-2, -1)
    if orientation == 4:  # mirrored vertically
        return image.flip(-2)
    transposed = image.transpose(-2, -1)  # (3, W, H)
    if orientation == 5:  # transpose
        return transposed
    if orientation == 6:  # stored rotated 90 ccw: turn 90 cw
        return transposed.flip(-1)
    if orientation == 7:  # transverse
        return transposed.flip(-2, -1)
    if orientation == 8:  # stored rotated 90 cw: turn 90 ccw
        return transposed.flip(-2)
    return image
