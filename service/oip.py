"""The Open Inference Protocol v2 (KServe and Triton REST): its bodies in and out.

An inference request is a JSON object, optionally followed by binary tensor data
(Triton's binary tensor data extension: the JSON's length in the
``Inference-Header-Content-Length`` header, each tensor's bytes in its
``parameters.binary_data_size``, in input order). Ocellus models take one input,
``image``: a ``BYTES`` tensor of shape ``[N]`` or ``[N, 1]`` whose elements are
encoded image files (JPEG, PNG, ...). In JSON, a ``BYTES`` element is a string,
so an image goes base64-encoded there (KServe's convention); in binary it is
raw, each element prefixed by its length (4 bytes, little-endian).

The request's ``parameters`` carry the task's options (service/options.py:
``top_k``; ``conf``, ``iou``, ``max_det``, ``classes``, ``agnostic``,
``multi_label``) besides the protocol's own (``binary_data_output``).

Limits are the multipart routes': `Settings.max_files` images per request,
`Settings.max_upload_bytes` per image, and `MAX_JSON_BYTES` for the JSON part,
which is parsed in memory; the binary part is spooled to disk past 1 MB, as
multipart uploads are. A gzip or deflate body (``Content-Encoding``) is
inflated as it streams, and refused once it inflates past
`Settings.max_request_bytes`.
"""

from __future__ import annotations

import binascii
import json
import math
import re
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from tempfile import SpooledTemporaryFile
from typing import Any

import anyio
import numpy as np
from starlette.datastructures import UploadFile

from service.errors import RequestError

INPUT = "image"
HEADER_LENGTH = "inference-header-content-length"
MAX_JSON_BYTES = 16 * 1024 * 1024
# With binary data, the JSON part only describes the tensors.
MAX_HEADER_BYTES = 64 * 1024
# A request's JSON holds a few objects and lists and one string per image: more
# brackets, braces, quotes and commas than this is not one, and is refused before
# parsing (16 MiB of "[{},{},...]" would parse into about 330 MB of Python objects).
MAX_JSON_TOKENS = 20_000
INFLATE_STEP = 1024 * 1024
SPOOL_BYTES = 1024 * 1024
EXTENSIONS = ("binary_tensor_data",)
_NUMPY = {"FP32": "<f4", "INT64": "<i8", "INT32": "<i4"}

# Each task's outputs: name → (datatype, shape with -1 where it varies).
OUTPUTS: dict[str, dict[str, tuple[str, list[int]]]] = {
    "classify": {"labels": ("BYTES", [-1, -1]), "scores": ("FP32", [-1, -1]),
                 "class_ids": ("INT64", [-1, -1])},
    "detect": {"num_detections": ("INT32", [-1]), "boxes": ("FP32", [-1, -1, 4]),
               "scores": ("FP32", [-1, -1]), "class_ids": ("INT64", [-1, -1]),
               "labels": ("BYTES", [-1, -1])},
}


@dataclass
class InferRequest:
    """A parsed inference request: its images (spooled parts), options and outputs."""

    id: str | None
    images: list[UploadFile]
    parameters: dict[str, Any]
    outputs: dict[str, bool] | None  # name → binary; None: every output
    binary_output: bool  # for outputs not named, or all when `outputs` is None
    _spools: list[Any] = field(default_factory=list, repr=False)

    def close(self) -> None:
        for spool in self._spools:
            spool.close()


def _bad(message: str, status: int = 400, code: str = "bad_request") -> RequestError:
    return RequestError(message, status=status, code=code)


async def spool_body(stream: AsyncIterator[bytes], encoding: str | None,
                     max_bytes: int) -> SpooledTemporaryFile:
    """The request body in a spooled file, inflated if it was sent compressed.

    Raises:
        RequestError: An unknown ``Content-Encoding`` (415), a body that inflates past
            `max_bytes` (413), or a corrupt compressed stream (400).
    """
    encoding = (encoding or "identity").strip().lower()
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None and encoding != "identity":
        raise _bad(f"Content-Encoding {encoding!r} is not supported: send gzip, deflate or "
                   f"none", 415, "unsupported_media_type")
    inflater = zlib.decompressobj(wbits) if wbits is not None else None
    spool = SpooledTemporaryFile(SPOOL_BYTES)  # noqa: SIM115 - the caller closes it
    size = 0

    def take(chunk: bytes) -> None:
        """Inflate (at most `INFLATE_STEP` at a time) and write one received chunk."""
        nonlocal size
        while chunk:
            if inflater is None:
                data, chunk = chunk, b""
            else:
                try:
                    data = inflater.decompress(chunk, min(INFLATE_STEP, max_bytes - size + 1))
                except zlib.error as exc:
                    raise _bad(f"the {encoding} body is corrupt: {exc}") from None
                chunk = inflater.unconsumed_tail
            size += len(data)
            if size > max_bytes:
                raise _bad(f"request body too large: over the limit of {max_bytes} bytes"
                           + (" once inflated" if inflater else ""), 413, "too_large")
            spool.write(data)
            if inflater is not None and (not data or inflater.eof):
                if inflater.eof and (chunk or inflater.unused_data):
                    raise _bad(f"bytes after the end of the {encoding} stream")
                break

    try:
        async for chunk in stream:
            # Off the event loop: past 1 MB each write goes to disk, and inflating is CPU.
            await anyio.to_thread.run_sync(take, chunk)
        if inflater is not None and not inflater.eof:
            raise _bad(f"the {encoding} body ends before its stream does (truncated)")
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


def _json_part(spool: Any, header_length: str | None) -> tuple[dict[str, Any], int]:
    """The request's JSON object and where its binary part starts."""
    spool.seek(0, 2)
    total = spool.tell()
    if header_length is None:
        length, limit = total, MAX_JSON_BYTES
    elif re.fullmatch(r"[0-9]{1,12}", header_length.strip()) and int(header_length) <= total:
        length, limit = int(header_length), MAX_HEADER_BYTES
    else:
        raise _bad(f"Inference-Header-Content-Length must be a byte count within the body "
                   f"({total} bytes), got {header_length!r}")
    if length > limit:
        raise _bad(f"the JSON part is {length} bytes, over the limit of {limit}"
                   + ("" if header_length else ": send images as binary tensor data "
                      "(tritonclient: binary_data=True)"), 413, "too_large")
    spool.seek(0)
    raw = spool.read(length)
    if sum(raw.count(c) for c in (b"{", b"[", b'"', b",")) > MAX_JSON_TOKENS:
        raise _bad(f"the JSON part has more than {MAX_JSON_TOKENS} brackets, quotes and "
                   f"commas: not an inference request of at most a few images")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(f"the request is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _bad("the request must be a JSON object with \"inputs\"")
    return body, length


def _strings(data: Any, shape: list[int]) -> list[str]:
    """A BYTES tensor's JSON data as its N strings: ``[s, ...]`` for shape ``[N]``,
    ``[[s], ...]`` or flat for ``[N, 1]``."""
    if isinstance(data, list) and len(shape) == 2:
        data = [x[0] if isinstance(x, list) and len(x) == 1 else x for x in data]
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise _bad(f"input {INPUT!r}: JSON data must be base64 strings, one per image")
    if len(data) != math.prod(shape):
        raise _bad(f"input {INPUT!r}: shape {shape} holds {math.prod(shape)} images, the "
                   f"data {len(data)}")
    return data


def _element_file(data: bytes | None, source: Any = None, length: int = 0) -> Any:
    """One image's bytes in a spooled file of its own (`data`, or `length` bytes of
    `source`), as a multipart part is kept."""
    spool = SpooledTemporaryFile(SPOOL_BYTES)  # noqa: SIM115 - closed by InferRequest.close
    try:
        if data is not None:
            spool.write(data)
        while length:
            block = source.read(min(length, 1 << 20))
            if not block:
                raise _bad("the binary tensor data ended early")
            spool.write(block)
            length -= len(block)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


def parse_infer_request(spool: Any, header_length: str | None, *, max_files: int,
                        max_upload_bytes: int) -> InferRequest:
    """Read an inference request from its spooled body.

    Raises:
        RequestError: Anything the protocol or the limits do not allow: 400 for a
            malformed request, 413 for too many images or one too large.
    """
    body, offset = _json_part(spool, header_length)
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise _bad(f"expected \"inputs\" with one tensor, {INPUT!r} (BYTES, shape [N]: "
                   f"encoded images), got {json.dumps(inputs)[:200]}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT:
        raise _bad(f"unknown input {tensor.get('name')!r}: the model's input is {INPUT!r}")
    if tensor.get("datatype") != "BYTES":
        raise _bad(f"input {INPUT!r} must be BYTES (encoded image files), got "
                   f"{tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or len(shape) not in (1, 2)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                       for d in shape) or shape[1:] not in ([], [1])):
        raise _bad(f"input {INPUT!r}: shape must be [N] or [N, 1], got {shape!r}")
    count = math.prod(shape)
    if count == 0:
        raise _bad(f"input {INPUT!r} holds no image (shape {shape})")
    if count > max_files:
        raise _bad(f"too many images: the limit is {max_files} per request, got {count}",
                   413, "too_many_files")
    params = tensor.get("parameters")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise _bad(f"input {INPUT!r}: \"parameters\" must be an object")
    images: list[UploadFile] = []
    spools: list[Any] = []
    try:
        if "binary_data_size" in params:
            size = params["binary_data_size"]
            spool.seek(0, 2)
            if not isinstance(size, int) or size < 0 or offset + size > spool.tell():
                raise _bad(f"binary_data_size {size!r} does not fit the body's binary part")
            spool.seek(offset)
            end = offset + size
            while spool.tell() < end:
                if end - spool.tell() < 4:
                    raise _bad("binary tensor data: a truncated element length")
                (length,) = struct.unpack("<I", spool.read(4))
                if len(spools) == count:
                    raise _bad(f"binary tensor data holds more than the {count} elements of "
                               f"shape {shape}")
                if length > max_upload_bytes:
                    raise _bad(f"image[{len(spools)}]: {length} bytes, over the limit of "
                               f"{max_upload_bytes} bytes per image", 413, "too_large")
                if spool.tell() + length > end:
                    raise _bad(f"image[{len(spools)}]: its length runs past the tensor's data")
                spools.append(_element_file(None, spool, length))
        else:
            for i, text in enumerate(_strings(tensor.get("data"), shape)):
                try:
                    raw = binascii.a2b_base64(text, strict_mode=True)
                except (binascii.Error, ValueError) as exc:
                    raise _bad(f"image[{i}]: not base64 ({exc}); in JSON, images go "
                               f"base64-encoded, or send binary tensor data") from None
                if len(raw) > max_upload_bytes:
                    raise _bad(f"image[{i}]: {len(raw)} bytes, over the limit of "
                               f"{max_upload_bytes} bytes per image", 413, "too_large")
                spools.append(_element_file(raw))
        if len(spools) != count:
            raise _bad(f"input {INPUT!r}: shape {shape} holds {count} images, the binary "
                       f"data {len(spools)}")
        images = [UploadFile(s, filename=f"image[{i}]") for i, s in enumerate(spools)]
        parameters = body.get("parameters") or {}
        outputs = body.get("outputs")
        if not isinstance(parameters, dict) or not (outputs is None or isinstance(outputs, list)
                                                    and all(isinstance(o, dict) and isinstance(
                                                        o.get("parameters", {}), dict | None)
                                                        for o in outputs)):
            raise _bad("\"parameters\" must be an object, and \"outputs\" a list of objects "
                       "with \"name\" and optional \"parameters\" objects")
        binary = parameters.get("binary_data_output", False) is True
        wanted = None if outputs is None else {
            str(o.get("name")): (o.get("parameters") or {}).get("binary_data", binary) is True
            for o in outputs}
        request_id = body.get("id")
        return InferRequest(str(request_id) if request_id is not None else None, images,
                            parameters, wanted, binary, spools)
    except BaseException:
        for s in spools:
            s.close()
        raise


# An output's shape and row-major data; its datatype is `OUTPUTS`'.
Tensors = dict[str, tuple[list[int], list[Any]]]


def classify_tensors(results: list[list[Any]]) -> Tensors:
    """Top-k classes per image (objects with ``label``, ``index``, ``score``) as
    ``[N, k]`` tensors."""
    shape = [len(results), len(results[0]) if results else 0]
    return {"labels": (shape, [c.label for r in results for c in r]),
            "scores": (shape, [c.score for r in results for c in r]),
            "class_ids": (shape, [c.index for r in results for c in r])}


def detect_tensors(results: list[list[Any]]) -> Tensors:
    """Detections per image (``label``, ``class_id``, ``score``, ``box``) as tensors
    padded to the most detections of any image, with ``num_detections`` per image
    (the layout of TensorRT's EfficientNMS outputs)."""
    n, most = len(results), max((len(r) for r in results), default=0)
    rows = [list(r) + [None] * (most - len(r)) for r in results]
    return {
        "num_detections": ([n], [len(r) for r in results]),
        "boxes": ([n, most, 4], [x for row in rows for d in row
                                 for x in (d.box if d else (0.0,) * 4)]),
        "scores": ([n, most], [d.score if d else 0.0 for row in rows for d in row]),
        "class_ids": ([n, most], [d.class_id if d else -1 for row in rows for d in row]),
        "labels": ([n, most], [d.label if d else "" for row in rows for d in row])}


# Each task's outputs from its results; their names and datatypes are `OUTPUTS`'.
TENSORS = {"classify": classify_tensors, "detect": detect_tensors}


def check_outputs(task: str, request: InferRequest) -> None:
    """Refuse, before any work, outputs that the task does not have.

    Raises:
        RequestError: An unknown output name (400).
    """
    unknown = [n for n in request.outputs or () if n not in OUTPUTS[task]]
    if unknown:
        raise _bad(f"unknown outputs {unknown}: this model's are {list(OUTPUTS[task])}")


def _bytes_element(value: str) -> bytes:
    data = value.encode()
    return struct.pack("<I", len(data)) + data


def encode_outputs(task: str, results: list[Any], request: InferRequest,
                   head: dict[str, Any]) -> tuple[bytes, int | None]:
    """The response body, and the JSON part's length when binary data follows it.

    Args:
        task: The model's task: which outputs (`OUTPUTS`, `TENSORS`).
        results: One result per image, as the task's predictor gives them.
        request: Which outputs were asked for (`check_outputs`), and in which form.
        head: The response's other fields (model_name, model_version, id).
    """
    tensors = TENSORS[task](results)
    names = list(OUTPUTS[task]) if request.outputs is None else list(request.outputs)
    described, blobs = [], []
    for name in names:
        datatype = OUTPUTS[task][name][0]
        shape, data = tensors[name]
        binary = request.binary_output if request.outputs is None else request.outputs[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            blob = (b"".join(_bytes_element(v) for v in data) if datatype == "BYTES"
                    else np.asarray(data, dtype=_NUMPY[datatype]).tobytes())
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = data
        described.append(entry)
    header = json.dumps({**head, "outputs": described}).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
