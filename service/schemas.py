"""Response models of every route (the OpenAPI schema comes from these)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ModelRef(BaseModel):
    name: str
    version: str
    task: str


class Prediction(BaseModel):
    label: str
    index: int
    score: float = Field(ge=0, le=1)


class ClassifyResult(BaseModel):
    filename: str | None
    width: int
    height: int
    predictions: list[Prediction]


class ClassifyResponse(BaseModel):
    model: ModelRef
    results: list[ClassifyResult]


class Detection(BaseModel):
    label: str
    class_id: int
    score: float = Field(ge=0, le=1)
    box: list[float] = Field(description="[x1, y1, x2, y2] in the original image's pixels")


class DetectResult(BaseModel):
    filename: str | None
    width: int
    height: int
    detections: list[Detection]


class DetectResponse(BaseModel):
    model: ModelRef
    results: list[DetectResult]


class ModelInfo(BaseModel):
    name: str
    version: str
    task: str
    device: str
    loaded_at: str
    backend: str = Field("eager", description="the inference backend that serves the model "
                         "(eager, compiled, bf16, int8)")
    precision: str = Field("fp32", description="the export's precision: fp32, or int8 for an "
                           "export of `ocellus quantize`")
    accuracy_drop: dict[str, Any] | None = Field(
        None, description="an int8 export's measured drop against its fp32 model, on "
        "labelled data (top1 or map50_95, and the largest per-class recall drop)")
    agreement_with_fp32: dict[str, Any] | None = Field(
        None, description="an int8 export made without labelled data (the defaults): its "
        "agreement with its fp32 model on held-out real photos (top1, top5_containment and "
        "confident_top1 for a classifier; boxes matched at IoU 0.5 and 0.9 for a detector)")
    backend_details: dict[str, Any] | None = Field(
        None, description="why this backend: measured img/s and agreement with eager fp32")
    batching: dict[str, Any] | None = Field(
        None, description="the batch size served (preferred), the most allowed (max), and "
        "the img/s measured per batch size that chose it")
    path: str | None = Field(None, description="the export folder served (a registry "
                             "version's folder with --registry); with the admin token only")
    manifest: dict[str, Any] = Field(description="without the admin token: no training "
                                     "args, and absolute paths shown as <redacted>")


class RefusedModel(BaseModel):
    name: str
    version: str | None = Field(None, description="the registry version refused (none for an "
                                "export given with --model, or an unreadable `current` file)")
    path: str | None = Field(None, description="what was refused: absolute with the admin "
                             "token, else relative to the registry or the export's folder")
    reason: str
    refused_at: str
    serving: str | None = Field(None, description="the version still served instead (a "
                                "refused reload), if any")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    refused: list[RefusedModel] = Field(default_factory=list,
                                        description="models whose last load was refused")


class Readiness(BaseModel):
    status: str = Field(description="loading (503), ready (200), degraded (200: some models "
                        "serve, some were refused), unavailable (503: none serves)")
    models: list[str] = Field(default_factory=list, description="the models served")
    refused: list[RefusedModel] = Field(default_factory=list)


class ReloadResponse(BaseModel):
    name: str
    version: str = Field(description="the version now served")
    status: str = Field(description="reloaded (switched) or unchanged (already served)")
    previous: str | None = Field(None, description="the version served before")


class RegistryHistory(BaseModel):
    name: str
    current: str | None = Field(description="the version `current` names")
    versions: list[str] = Field(description="published versions, oldest first")
    events: list[dict[str, Any]] = Field(description="promotions and rollbacks, oldest "
                                         "first: action, version, reason, at")


class Sample(BaseModel):
    labels: dict[str, str]
    value: float


class Stats(BaseModel):
    time: float = Field(description="Unix time of the reading")
    metrics: dict[str, list[Sample]] = Field(description="samples by sample name")


class Status(BaseModel):
    status: str


class ErrorBody(BaseModel):
    status: int
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's OpenAPI ``responses``: these statuses answer in the one error shape."""
    return {status: {"model": ErrorResponse} for status in statuses}


# The Open Inference Protocol v2 (service/routes/v2.py, service/oip.py).
class V2Error(BaseModel):
    error: str


def v2_error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A /v2 route's OpenAPI ``responses``: these statuses answer in the protocol's shape."""
    return {status: {"model": V2Error} for status in statuses}


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2Tensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2Tensor]
    outputs: list[V2Tensor]


class V2InputTensor(V2Tensor):
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size: the byte count of this tensor's binary data")
    data: list[Any] | None = Field(None, description="base64-encoded images (JSON mode)")


class V2RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data: bool")


class V2InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="the task's options (top_k; conf, iou, max_det, classes, agnostic, "
        "multi_label) and binary_data_output")
    inputs: list[V2InputTensor]
    outputs: list[V2RequestedOutput] | None = None


class V2OutputTensor(V2Tensor):
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[V2OutputTensor]
