"""``ocellus predict``: the CLI serves the same bounded preprocessing as the service."""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

import pytest
import torch

from cli.predict import get_args_parser, main
from models.classification.classifier import ImageClassifier
from models.export import Manifest, save_export
from models.preprocess import Preprocessing


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def thin_png(width: int, height: int) -> bytes:
    """A greyscale PNG of zeros, written by hand: ~50 KB for 8 x 6,000,000."""
    comp = zlib.compressobj(6)
    row = bytes(1 + width)  # filter byte 0, then the row
    rows_per_block = max(1, (1 << 20) // len(row))
    idat = b"".join(comp.compress(row * min(rows_per_block, height - i))
                    for i in range(0, height, rows_per_block)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight classifier with the served models' preprocessing (resize 256, crop 224)."""
    torch.manual_seed(0)
    model = ImageClassifier("efficientnet_lite0", 2, backbone_weights=None)
    manifest = Manifest(task="classify", architecture={"name": "classifier", "args": {
        "backbone": "efficientnet_lite0", "num_classes": 2}}, labels=["a", "b"],
        preprocessing=Preprocessing().to_dict())
    out = tmp_path_factory.mktemp("cli") / "export"
    save_export(model, out, manifest)
    return out


@pytest.mark.slow  # a 48-megapixel image decoded and predicted: ~3 s each
@pytest.mark.parametrize(("width", "height"), [(8, 6_000_000), (6_000_000, 8)])
def test_predict_on_a_48_megapixel_strip(export: Path, tmp_path: Path, capsys,
                                         width: int, height: int) -> None:
    # Before the bounded resize this asked for a ~150 GB tensor.
    image = tmp_path / "strip.png"
    image.write_bytes(thin_png(width, height))
    args = get_args_parser().parse_args([str(image), "--model", str(export), "--top-k", "2"])
    started = time.perf_counter()
    assert main(args) == 0
    elapsed = time.perf_counter() - started
    out = json.loads(capsys.readouterr().out)
    assert (out["width"], out["height"]) == (width, height)
    assert [r["label"] for r in out["results"]] in (["a", "b"], ["b", "a"])
    assert elapsed < 10, f"{elapsed:.1f}s"  # decode (~1 s) and load; not a 40 s resize
