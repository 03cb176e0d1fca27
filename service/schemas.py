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
    manifest: dict[str, Any]


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class Status(BaseModel):
    status: str


class ErrorBody(BaseModel):
    status: int
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
