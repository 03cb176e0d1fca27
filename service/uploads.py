"""Reading an upload: the multipart body is parsed as it streams, with every limit applied.

Left to FastAPI, a form is parsed whole with Starlette's defaults (1,000 files,
1,000 text fields of 1 MB each, kept in RAM) and only then checked, so one
request could cost hundreds of MB before its 413. Here each limit answers the
moment it is crossed, and the rest of the body is never read: files per request
(`Settings.max_files`, 413 ``too_many_files``), bytes per file
(`Settings.max_upload_bytes`, 413 ``too_large``), text fields (`MAX_FORM_FIELDS`,
413 ``too_many_fields``) and bytes per text field (`MAX_FIELD_BYTES`, 413
``too_large``). The inference routes take no text fields (their options are
query parameters), so those two fixed caps only leave room for a stray one.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import anyio
from fastapi import Request
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from models.errors import ImageTooLargeError
from service.errors import RequestError
from service.settings import Settings
from service.tracing import span

UPLOAD_FIELD = "file"
MAX_FORM_FIELDS = 8
MAX_FIELD_BYTES = 16 * 1024
IMAGE_FORMATS = "JPEG, PNG, WebP, BMP, TIFF, GIF"


class LimitedMultiPartParser(MultiPartParser):
    """Starlette's multipart parser, refusing with 413 as soon as a limit is crossed.

    Its callbacks run inside `parse()` for every chunk received, so raising there
    stops reading the body: the bytes after the limit stay unread.
    """

    def __init__(self, headers: Headers, stream: AsyncIterator[bytes], *, max_files: int,
                 max_file_bytes: int) -> None:
        super().__init__(headers, stream, max_files=max_files, max_fields=MAX_FORM_FIELDS,
                         max_part_size=MAX_FIELD_BYTES)
        self.max_file_bytes = max_file_bytes
        self._part_bytes = 0

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self._part_bytes = 0

    def on_headers_finished(self) -> None:
        try:
            super().on_headers_finished()
        except MultiPartException:
            if self._current_files > self.max_files:
                raise RequestError(
                    f"too many files: the limit is {self.max_files} per request, got more",
                    status=413, code="too_many_files") from None
            if self._current_fields > self.max_fields:
                raise RequestError(
                    f"too many form fields: the limit is {self.max_fields} text fields per "
                    f"request, got more; send images as parts named '{UPLOAD_FIELD}' with a "
                    f"filename, and options as query parameters",
                    status=413, code="too_many_fields") from None
            raise

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._part_bytes += end - start
        upload = self._current_part.file
        if upload is not None and self._part_bytes > self.max_file_bytes:
            raise ImageTooLargeError(
                f"{upload.filename or 'upload'}: over the limit of {self.max_file_bytes} bytes "
                f"per file (refused after {self._part_bytes} bytes)")
        if upload is None and self._part_bytes > self.max_part_size:
            raise RequestError(
                f"form field {self._current_part.field_name!r}: over the limit of "
                f"{self.max_part_size} bytes per text field", status=413, code="too_large")
        super().on_part_data(data, start, end)


@asynccontextmanager
async def read_uploads(request: Request, settings: Settings) -> AsyncIterator[list[UploadFile]]:
    """The request's image parts, read with the limits above, for the ``async with`` block.

    The parts are closed (spooled files deleted) when the block is left. A route
    enters it itself, after its dependencies and query parameters have been checked
    (a bad model name or option costs no body read); as a FastAPI dependency with
    ``yield`` it cost a tenth of the event loop's time per request (py-spy, c=32).

    Raises:
        RequestError: Not a multipart body, no part named ``file`` (422), a limit
            crossed (413), or a malformed body (400).
        ImageTooLargeError: A file over `Settings.max_upload_bytes` (413).
    """
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        raise RequestError(f"missing {UPLOAD_FIELD}: expected a multipart/form-data body with "
                           f"parts named '{UPLOAD_FIELD}', got content type {content_type!r}")
    try:
        async with aclosing(request.stream()) as stream:
            with span("read body"):
                form = await LimitedMultiPartParser(
                    request.headers, stream, max_files=settings.max_files,
                    max_file_bytes=settings.max_upload_bytes).parse()
    except MultiPartException as exc:
        raise RequestError(f"malformed multipart body: {exc.message}", status=400,
                           code="bad_request") from None
    try:
        parts = form.getlist(UPLOAD_FIELD)
        files = [p for p in parts if isinstance(p, UploadFile)]
        if len(files) != len(parts) or not files:
            raise RequestError(
                f"missing {UPLOAD_FIELD}: expected a multipart/form-data part named "
                f"'{UPLOAD_FIELD}' with a filename (an image file), got "
                f"{len(files)} files and {len(parts) - len(files)} text fields by that name")
        yield files
    finally:
        # Shielded: when the client has gone, the request is cancelled, and a cancelled
        # scope would refuse the thread that close() hands each spooled file to, leaving
        # the files (up to max_files x max_upload_bytes on disk) open.
        with anyio.CancelScope(shield=True):
            await form.close()


# The request body of the inference routes, for OpenAPI: FastAPI sees no body
# parameter (`read_uploads` reads it), so the routes declare it as `openapi_extra`;
# `document_upload_limits` adds the limits of the running settings.
UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": [UPLOAD_FIELD],
        "properties": {UPLOAD_FIELD: {
            "type": "array", "minItems": 1,
            "items": {"type": "string", "format": "binary"},
            "description": f"one or more images ({IMAGE_FORMATS}), each a part named "
                           f"'{UPLOAD_FIELD}' with a filename"}}}},
}}}


def document_upload_limits(schema: dict[str, Any], *, max_files: int,
                           max_upload_bytes: int) -> dict[str, Any]:
    """Write the upload limits into an OpenAPI schema's image parts (in place; idempotent)."""
    for operation in (op for path in schema.get("paths", {}).values() for op in path.values()):
        if "requestBody" not in operation:
            continue
        # FastAPI put `UPLOAD_BODY` itself into the schema: a copy keeps it unchanged.
        body = operation["requestBody"] = copy.deepcopy(operation["requestBody"])
        files = body.get("content", {}).get("multipart/form-data", {}).get("schema", {}).get(
            "properties", {}).get(UPLOAD_FIELD)
        if files is None or files.get("type") != "array":
            continue
        files["maxItems"] = max_files
        files["description"] = (
            f"one to {max_files} images ({IMAGE_FORMATS}), each a part named '{UPLOAD_FIELD}' "
            f"with a filename, at most {max_upload_bytes} bytes each")
    return schema

