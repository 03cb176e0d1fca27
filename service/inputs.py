"""From uploaded parts to model inputs: size checks, decoding and preprocessing."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool

from models.errors import ImageTooLargeError
from models.imaging import decode_image
from models.predictor import Predictor
from service.errors import RequestError
from service.settings import Settings


@dataclass
class PreparedImage:
    """One uploaded image, decoded and preprocessed for a model."""

    filename: str | None
    width: int  # of the original, upright image
    height: int
    input: torch.Tensor  # (3, S, S), the model's input
    meta: Any  # what postprocess needs to map results back (e.g. letterbox geometry)


def _prepare(data: bytes, filename: str | None, predictor: Predictor,
             settings: Settings) -> PreparedImage:
    decoded = decode_image(data, max_pixels=settings.max_image_pixels,
                           max_bytes=settings.max_upload_bytes,
                           target_size=predictor.input_size)
    # The tensor may be a reduced decode of a large JPEG: boxes map back to the original.
    model_input, meta = predictor.preprocess(decoded.tensor,
                                             original_size=(decoded.width, decoded.height))
    return PreparedImage(filename, decoded.width, decoded.height, model_input, meta)


async def prepare_uploads(files: list[UploadFile], predictor: Predictor,
                          settings: Settings) -> list[PreparedImage]:
    """Check limits, then decode and preprocess every part in the thread pool.

    Raises:
        RequestError: Too many parts.
        ImageTooLargeError, ImageDecodeError, UnsupportedImageFormatError: A bad part.
    """
    if len(files) > settings.max_files:
        raise RequestError(f"too many files: the limit is {settings.max_files} per request, "
                           f"got {len(files)}", status=413, code="too_many_files")
    payloads = []
    for f in files:
        if f.size is not None and f.size > settings.max_upload_bytes:
            raise ImageTooLargeError(
                f"{f.filename or 'upload'}: {f.size} bytes is over the limit of "
                f"{settings.max_upload_bytes} bytes per file")
        payloads.append((await f.read(), f.filename))
    return list(await asyncio.gather(*(
        run_in_threadpool(_prepare, data, name, predictor, settings) for data, name in payloads
    )))
