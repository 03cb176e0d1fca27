"""The Open Inference Protocol v2 (KServe and Triton REST), beside ``/v1``.

Inference goes through the same `Inference.run` as ``/v1/classify`` and
``/v1/detect``: the same decode pool, batcher, limits, metrics and API keys.
The bodies are service/oip.py's; errors are ``{"error": "message"}``, as the
protocol says (`service.middleware.V2ErrorMiddleware` reshapes the service's).

========================================================  ==========================
``GET /v2``                                               server metadata
``GET /v2/health/live``, ``/v2/health/ready``             probes
``GET /v2/models/{name}[/versions/{version}]``            model metadata
``GET /v2/models/{name}[/versions/{version}]/ready``      model readiness
``POST /v2/models/{name}[/versions/{version}]/infer``     inference
========================================================  ==========================
"""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from models.errors import ModelNotReadyError
from service.deps import InferenceDep, StoreDep
from service.errors import RequestError
from service.model_store import ModelStore, ServedModel
from service.oip import (
    EXTENSIONS,
    HEADER_LENGTH,
    INPUT,
    OUTPUTS,
    InferRequest,
    check_outputs,
    encode_outputs,
    parse_infer_request,
    spool_body,
)
from service.options import OPTIONS
from service.schemas import (
    V2InferRequest,
    V2InferResponse,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2ServerMetadata,
    V2Tensor,
    v2_error_responses,
)
from service.tracing import span

router = APIRouter(prefix="/v2", tags=["v2"])
MODEL_ERRORS = v2_error_responses(400, 404, 503)
VERSIONED = "/models/{name}/versions/{version}"


def _served(store: ModelStore, name: str, version: str | None) -> ServedModel:
    """The model called `name`, if it serves `version` (when given).

    Raises:
        ModelNotReadyError: No such model, or another version is served (404).
        ModelsLoadingError: Not loaded yet (503).
    """
    return _check_version(store.get(name, None), version)


def _check_version(served: ServedModel, version: str | None) -> ServedModel:
    if version is not None and version != str(served.manifest.version):
        raise ModelNotReadyError(f"model {served.name!r} version {version!r} is not served; "
                                 f"the served version is {served.manifest.version!r}")
    return served


@router.get("", response_model=V2ServerMetadata)
async def server_metadata(request: Request) -> V2ServerMetadata:
    """The server's name, version and protocol extensions."""
    return V2ServerMetadata(name="ocellus", version=request.app.version,
                            extensions=list(EXTENSIONS))


@router.get("/health/live", response_model=V2Live)
async def live() -> V2Live:
    """The process is alive (``/healthz``)."""
    return V2Live(live=True)


@router.get("/health/ready", response_model=V2Ready, responses={503: {"model": V2Ready}})
async def ready(store: StoreDep) -> V2Ready | JSONResponse:
    """200 once the start-up loading is done and a model serves, else 503 (``/readyz``)."""
    if store.loading or not store.ready:
        return JSONResponse(V2Ready(ready=False).model_dump(), status_code=503)
    return V2Ready(ready=True)


@router.get("/models/{name}", response_model=V2ModelMetadata, responses=MODEL_ERRORS)
@router.get(VERSIONED, response_model=V2ModelMetadata, responses=MODEL_ERRORS)
async def model_metadata(store: StoreDep, name: str,
                         version: str | None = None) -> V2ModelMetadata:
    """The model's versions, input (``image``: BYTES, encoded images) and outputs."""
    served = _served(store, name, version)
    return V2ModelMetadata(
        name=served.name, versions=[str(served.manifest.version)], platform="pytorch",
        inputs=[V2Tensor(name=INPUT, datatype="BYTES", shape=[-1])],
        outputs=[V2Tensor(name=n, datatype=d, shape=s)
                 for n, (d, s) in OUTPUTS[served.task].items()])


@router.get("/models/{name}/ready", response_model=V2ModelReady, responses=MODEL_ERRORS)
@router.get(VERSIONED + "/ready", response_model=V2ModelReady, responses=MODEL_ERRORS)
async def model_ready(store: StoreDep, name: str, version: str | None = None) -> V2ModelReady:
    """200 when the model (and version) serves; 404 when not, 503 while loading."""
    served = _served(store, name, version)
    return V2ModelReady(name=served.name, ready=True)


def _postprocess_options(served: ServedModel, parameters: dict[str, Any],
                         settings: Any) -> dict[str, Any]:
    """The task's options from the request's parameters (service/options.py), as the
    postprocess arguments.

    Raises:
        RequestError: A parameter out of its bounds or of the wrong type (400).
    """
    params = dict(parameters)
    classes = params.get("classes")  # ids as numbers, or strings as /v1 takes them
    if isinstance(classes, int | str) and not isinstance(classes, bool):
        classes = [classes]
    if isinstance(classes, list):  # anything else stays, for the model to refuse
        params["classes"] = [str(c) if isinstance(c, int) and not isinstance(c, bool) else c
                             for c in classes]
    try:
        options = OPTIONS[served.task].model_validate(params)
        return options.postprocess_options(settings, len(served.predictor.labels))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        raise RequestError(f"parameters: {problems}", status=400, code="bad_request") from None
    except RequestError as exc:  # a class id out of range: the protocol's 400, not 422
        raise RequestError(f"parameters: {exc}", status=400, code="bad_request") from None


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` written in place: an OpenAPI document
    resolves ``#/...`` from its own root, where those definitions are not."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        return [resolve(x) for x in node] if isinstance(node, list) else node

    return resolve(schema)


INFER = {"openapi_extra": {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _inlined(V2InferRequest.model_json_schema())}}}},
    "responses": {**v2_error_responses(400, 404, 413, 415, 503), 200: {
        "model": V2InferResponse, "content": {"application/octet-stream": {}},
        "description": "outputs as JSON, or JSON followed by binary tensor data "
                       "(Inference-Header-Content-Length)"}}}


@router.post("/models/{name}/infer", **INFER)
@router.post(VERSIONED + "/infer", **INFER)
async def infer(request: Request, inference: InferenceDep, name: str,
                version: str | None = None) -> Response:
    """Classify or detect: ``image`` holds encoded images; the outputs are the task's.

    Classify: ``labels`` (BYTES), ``scores`` (FP32) and ``class_ids`` (INT64), each
    ``[N, top_k]``. Detect: ``num_detections`` (INT32 ``[N]``), ``boxes`` (FP32
    ``[N, D, 4]``, x1 y1 x2 y2 in the original image's pixels), ``scores``,
    ``class_ids`` and ``labels`` (``[N, D]``), D the most detections of any image;
    rows past an image's ``num_detections`` are padding (score 0, class -1).
    """
    settings = inference.settings
    _served(inference.store, name, version)  # a wrong name costs no body read
    with span("read body"):
        spool = await spool_body(request.stream(), request.headers.get("content-encoding"),
                                 settings.max_request_bytes)

    def parse() -> InferRequest:
        try:
            return parse_infer_request(spool, request.headers.get(HEADER_LENGTH),
                                       max_files=settings.max_files,
                                       max_upload_bytes=settings.max_upload_bytes)
        finally:  # in the thread that reads it, however the request ends
            spool.close()

    # Shielded: a client gone while this runs must not leave its images' spooled files
    # unclosed (they are closed below once the request is over, cancelled or not).
    with anyio.CancelScope(shield=True):
        parsed = await inference.pool.run(parse)
    try:
        with inference.use(name, None) as served:
            _check_version(served, version)
            check_outputs(served.task, parsed)
            options = _postprocess_options(served, parsed.parameters, settings)
            _, results = await inference.run(served, parsed.images, **options)
            head = {"model_name": served.name, "model_version": str(served.manifest.version),
                    **({"id": parsed.id} if parsed.id is not None else {})}
            with span("encode"):
                body, header_length = encode_outputs(served.task, results, parsed, head)
    finally:
        parsed.close()
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(header_length)})
