"""How training reads an image file: upright, decoded as the service decodes an upload.

The EXIF contract: labels refer to the upright image, the one a viewer shows
(EXIF orientation applied), as in COCO tooling and Ultralytics. Training, the
fit loop's per-epoch evaluation and ``ocellus evaluate`` all read image files
here, so all three see the geometry the labels describe, which is also the one
the service predicts on (`models.imaging.decode_image` decodes both).
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.errors import DatasetError, OcellusError
from models.imaging import decode_image

# Training data are the operator's own files, not uploads: the service's pixel
# limit does not apply (PIL's decompression-bomb guard still does).
MAX_PIXELS = 1 << 31


def read_image(path: Path, *, target_size: int | None = None) -> torch.Tensor:
    """The upright uint8 ``(3, H, W)`` RGB tensor of an image file.

    Args:
        path: The file.
        target_size: The side the image will be resized to; a large JPEG is then
            decoded at reduced scale, as the service decodes it for that input size.

    Raises:
        DatasetError: The file is missing or is not an image Ocellus decodes.
    """
    try:
        decoded = decode_image(path.read_bytes(), max_pixels=MAX_PIXELS, target_size=target_size)
    except (OSError, ValueError, OcellusError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from exc
    return decoded.tensor.contiguous()  # PIL's decode is a channels-last view
