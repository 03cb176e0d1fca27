"""Dependencies of the routes, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from service.inference import Inference
from service.metrics import Metrics
from service.model_store import ModelStore
from service.settings import Settings


# `async def`, though they only read attributes: FastAPI runs a plain `def`
# dependency in its thread pool, three thread hand-offs per request for nothing.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> ModelStore:
    return request.app.state.store


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


async def get_inference(store: StoreDep, settings: SettingsDep,
                        metrics: MetricsDep) -> Inference:
    return Inference(store, settings, metrics)


# What a route that answers from uploaded images takes (service/inference.py).
InferenceDep = Annotated[Inference, Depends(get_inference)]


# The `model` query parameter of the inference routes, checked before the upload is
# read: declared before the upload in a route, it answers an unknown name (404), a
# model of another task (400) or a store still loading (503) without reading the
# body. The route then takes the model with `ModelStore.use`, which checks again.
async def classify_model(store: StoreDep, model: Annotated[str | None, Query(
        description="model name; default: the first loaded classify model")] = None
                         ) -> str | None:
    store.get(model, "classify")
    return model


async def detect_model(store: StoreDep, model: Annotated[str | None, Query(
        description="model name; default: the first loaded detect model")] = None
                       ) -> str | None:
    store.get(model, "detect")
    return model


ClassifyModelDep = Annotated[str | None, Depends(classify_model)]
DetectModelDep = Annotated[str | None, Depends(detect_model)]
