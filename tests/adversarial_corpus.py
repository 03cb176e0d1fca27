"""An adversarial image corpus, generated (no binary blobs in the repository).

One function per case, each returning the encoded bytes. `CASES` lists them with
what a test should send: every case goes to /v1/classify and /v1/detect, and the
long ones also ask /v1/detect for the rendered image as JPEG.

The cases are what an attacker (or an odd camera) sends: long, thin images whose
resize could explode, chunks and segments that decompress or accumulate without
bound, thousands of frames or pages, headers that claim 0x0, and the pixel modes
that need conversion. Files stay under the default 20 MiB upload limit, so they
reach the decoder. Generating all of them takes a few seconds and under ~150 MB.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

MIB = 1 << 20


# -- writers ---------------------------------------------------------------------------------

def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _deflate_zeros(size: int) -> bytes:
    """zlib stream of `size` zero bytes, compressed 1 MiB at a time (bounded memory)."""
    comp = zlib.compressobj(6)
    block = bytes(MIB)
    parts = [comp.compress(block) for _ in range(size // MIB)]
    parts.append(comp.compress(bytes(size % MIB)))
    return b"".join(parts) + comp.flush()


def png(width: int, height: int, *, bit_depth: int = 8, color_type: int = 0,
        idat: bytes | None = None, before_idat: Iterable[bytes] = (),
        after_idat: Iterable[bytes] = ()) -> bytes:
    """A PNG written by hand. Without `idat`, every pixel is zero (filter 0 rows)."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    row_bytes = (width * channels * bit_depth + 7) // 8
    if idat is None:
        idat = _deflate_zeros(height * (1 + row_bytes))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + b"".join(before_idat)
            + _chunk(b"IDAT", idat) + b"".join(after_idat) + _chunk(b"IEND", b""))


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _gradient(h: int, w: int) -> np.ndarray:
    """uint8 (h, w, 3): smooth colour ramps, so JPEG has something to encode."""
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    return np.stack(np.broadcast_arrays(y, x, (x + y) / 2), axis=-1).astype(np.uint8)


def _small_rgb(size: int = 64) -> Image.Image:
    return Image.fromarray(_gradient(size, size))


def _jpeg_with_segments(segments: Iterable[bytes]) -> bytes:
    """A small JPEG with extra marker segments inserted right after SOI."""
    base = _encode(_small_rgb(), "JPEG", quality=90)
    return base[:2] + b"".join(segments) + base[2:]


def _segment(marker: int, body: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body


# -- long, thin images -----------------------------------------------------------------------

def thin_png_8x6000000() -> bytes:
    """8 wide, 6,000,000 tall, greyscale: ~50 KB, 48 MP (under the pixel cap)."""
    return png(8, 6_000_000)


def thin_png_6000000x8() -> bytes:
    return png(6_000_000, 8)


def thin_png_64x750000_rgb() -> bytes:
    """64 x 750,000 RGB: resizing the short side to 256 would need ~2.3 GB."""
    return png(64, 750_000, color_type=2)


def thin_jpeg_1x65000() -> bytes:
    """The whole-image resize of this took 40 s on the decode thread."""
    return _encode(Image.fromarray(_gradient(65_000, 1)), "JPEG", quality=90)


def thin_jpeg_65000x1() -> bytes:
    return _encode(Image.fromarray(_gradient(1, 65_000)), "JPEG", quality=90)


def wide_png_70000x200_rgb() -> bytes:
    """Wider than JPEG's 65,500 px: rendering it as JPEG at full size fails in libjpeg."""
    return png(70_000, 200, color_type=2)


# -- decompression and accumulation bombs in metadata ----------------------------------------

def png_ztxt_bomb() -> bytes:
    """A zTXt chunk of ~65 KB that inflates to 64 MiB (PIL stops at 1 MiB)."""
    body = b"Comment\x00\x00" + _deflate_zeros(64 * MIB)
    return png(64, 64, before_idat=[_chunk(b"zTXt", body)])


def png_itxt_bomb() -> bytes:
    """A compressed iTXt chunk that inflates to 64 MiB, after the pixels."""
    body = b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + _deflate_zeros(64 * MIB)
    return png(64, 64, after_idat=[_chunk(b"iTXt", body)])


def png_many_text_chunks() -> bytes:
    """200 zTXt chunks of just under 1 MiB each: 200 MiB of text in total."""
    one = _chunk(b"zTXt", b"Comment\x00\x00" + _deflate_zeros(MIB - 1024))
    return png(64, 64, before_idat=[one] * 200)


def png_icc_bomb() -> bytes:
    """An iCCP profile that inflates to 64 MiB."""
    body = b"ICC\x00\x00" + _deflate_zeros(64 * MIB)
    return png(64, 64, color_type=2, before_idat=[_chunk(b"iCCP", body)])


def jpeg_icc_segments() -> bytes:
    """A JPEG ICC profile split over 255 APP2 segments of 64 KB (~16 MB)."""
    piece = bytes(65_000)
    return _jpeg_with_segments(
        _segment(0xE2, b"ICC_PROFILE\x00" + bytes([i, 255]) + piece) for i in range(1, 256))


def jpeg_huge_comments() -> bytes:
    """300 COM segments of 64 KB each: ~19.7 MB of comment before the image."""
    return _jpeg_with_segments([_segment(0xFE, b"A" * 65_533)] * 300)


def jpeg_huge_exif() -> bytes:
    """An EXIF IFD with 5,000 entries whose values point far outside the segment, then
    200 more 64 KB APP1 segments."""
    entries = 5_000
    ifd = struct.pack("<H", entries) + b"".join(
        struct.pack("<HHII", 0x010E + i % 64, 2, 0x7FFFFFFF, 0x7FFFFFF0) for i in range(entries))
    exif = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    junk = _segment(0xE1, b"Exif\x00\x00" + bytes(65_000))
    return _jpeg_with_segments([_segment(0xE1, exif)] + [junk] * 200)


# -- many frames and pages -------------------------------------------------------------------

def gif_thousands_of_frames() -> bytes:
    """5,000 frames of 64x64 (only the first is decoded)."""
    one = _encode(_small_rgb().quantize(16), "GIF")
    start = one.index(b"\x2c\x00\x00\x00\x00")  # the first image descriptor, at (0, 0)
    frame = b"\x21\xf9\x04\x00\x0a\x00\x00\x00" + one[start:-1]  # graphic control + image
    return one[:start] + frame * 5_000 + b"\x3b"


def tiff_hundreds_of_pages() -> bytes:
    pages = [_small_rgb(), *(Image.new("RGB", (64, 64), (i, 0, 0)) for i in range(299))]
    return _encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])


# -- headers that say 0x0 --------------------------------------------------------------------

def png_zero_size() -> bytes:
    return png(0, 0, idat=zlib.compress(b""))


def gif_zero_size() -> bytes:
    screen = b"GIF89a" + struct.pack("<HHBBB", 0, 0, 0x80, 0, 0) + bytes(6)
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 0, 0, 0) + b"\x02\x02\x44\x01\x00"
    return screen + image + b"\x3b"


def bmp_zero_size() -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, 0, 0, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def jpeg_zero_size() -> bytes:
    """A baseline JPEG whose SOF0 says 0x0."""
    base = bytearray(_encode(_small_rgb(), "JPEG", quality=90))
    sof = base.index(b"\xff\xc0")
    base[sof + 5:sof + 9] = struct.pack(">HH", 0, 0)  # height, width
    return bytes(base)


def tiff_zero_size() -> bytes:
    tags = [(256, 3, 1, 0), (257, 3, 1, 0), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, 1, 0), (277, 3, 1, 1), (278, 3, 1, 0), (279, 4, 1, 0)]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHII", *t) for t in tags) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd


# -- pixel modes that need conversion --------------------------------------------------------

def png_rgba_16bit() -> bytes:
    """16-bit RGBA (colour type 6, depth 16), half of it transparent."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 65_536, (256, 256, 4), dtype=np.uint16)
    pixels[:, :128, 3] = 0
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    return png(256, 256, bit_depth=16, color_type=6, idat=zlib.compress(rows))


def png_palette_transparency() -> bytes:
    image = _small_rgb(128).quantize(64)
    return _encode(image, "PNG", transparency=0)


def gif_palette_transparency() -> bytes:
    return _encode(_small_rgb(128).quantize(64), "GIF", transparency=3)


@dataclass(frozen=True)
class Case:
    """One corpus file and how to send it."""

    name: str
    make: Callable[[], bytes]
    render: bool = False  # also ask /v1/detect for the drawing, as JPEG


CASES: list[Case] = [
    Case("thin_png_8x6000000", thin_png_8x6000000, render=True),
    Case("thin_png_6000000x8", thin_png_6000000x8, render=True),
    Case("thin_png_64x750000_rgb", thin_png_64x750000_rgb, render=True),
    Case("thin_jpeg_1x65000", thin_jpeg_1x65000, render=True),
    Case("thin_jpeg_65000x1", thin_jpeg_65000x1, render=True),
    Case("wide_png_70000x200_rgb", wide_png_70000x200_rgb, render=True),
    Case("png_ztxt_bomb", png_ztxt_bomb),
    Case("png_itxt_bomb", png_itxt_bomb),
    Case("png_many_text_chunks", png_many_text_chunks),
    Case("png_icc_bomb", png_icc_bomb),
    Case("jpeg_icc_segments", jpeg_icc_segments),
    Case("jpeg_huge_comments", jpeg_huge_comments),
    Case("jpeg_huge_exif", jpeg_huge_exif),
    Case("gif_thousands_of_frames", gif_thousands_of_frames),
    Case("tiff_hundreds_of_pages", tiff_hundreds_of_pages),
    Case("png_zero_size", png_zero_size),
    Case("gif_zero_size", gif_zero_size),
    Case("bmp_zero_size", bmp_zero_size),
    Case("jpeg_zero_size", jpeg_zero_size),
    Case("tiff_zero_size", tiff_zero_size),
    Case("png_rgba_16bit", png_rgba_16bit),
    Case("png_palette_transparency", png_palette_transparency),
    Case("gif_palette_transparency", gif_palette_transparency),
]
