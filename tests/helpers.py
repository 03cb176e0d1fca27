"""Helpers that test modules import (``from helpers import ...``; pytest's ``pythonpath``
puts tests/ on the path). Fixtures live in conftest.py."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Server settings for tests that are not about the backend or batch sizes: eager, no
# measuring at start-up (which takes seconds per model).
QUICK_START = {"OCELLUS_BACKEND": "eager", "OCELLUS_TUNE_BATCH_SIZE": "false"}


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: int = 48) -> bytes:
    """A small solid-colour PNG with a little noise."""
    rng = np.random.default_rng(0)
    pixels = np.clip(np.array(color) + rng.integers(-20, 20, (size, size, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()
