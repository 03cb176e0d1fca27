"""Dependencies of the routes, as `Annotated` aliases.

Every route takes what the service holds (settings, metrics, the model store,
the registry watcher) and what the caller may do (the admin token) through
these, never from ``request.app.state`` itself: this module is where routes read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Query, Request

from models.errors import ModelsLoadingError, RegistryError
from service.auth import admin_refusal
from service.inference import Inference
from service.metrics import Metrics
from service.model_store import ModelStore
from service.registry_watch import RegistryWatcher
from service.settings import Settings


# `async def`, though they only read attributes: FastAPI runs a plain `def`
# dependency in its thread pool, three thread hand-offs per request for nothing.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def store_of(request: Request) -> ModelStore:
    """The model store, which the lifespan creates before uvicorn takes a request."""
    store = getattr(request.app.state, "store", None)
    if store is None:  # the app was called without its lifespan (a bare TestClient)
        raise ModelsLoadingError("the service has not started: no model is loaded yet")
    return store


async def get_store(request: Request) -> ModelStore:
    """The model store (`store_of`)."""
    return store_of(request)


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
StoreDep = Annotated[ModelStore, Depends(get_store)]


# The inference routes' dependencies read the app's state themselves rather than
# through SettingsDep, StoreDep and MetricsDep: FastAPI's solving costs per dependency
# in the graph, and the hot path had nine (0.7 ms of the event loop's time per request
# under cProfile, the most of any one thing).
async def get_inference(request: Request) -> Inference:
    state = request.app.state
    return Inference(store_of(request), state.settings, state.metrics)


# What a route that answers from uploaded images takes (service/inference.py).
InferenceDep = Annotated[Inference, Depends(get_inference)]


async def is_admin(request: Request, settings: SettingsDep) -> bool:
    """Whether the caller carries the admin token (``Authorization: Bearer TOKEN``)."""
    return admin_refusal(settings, request.headers) is None


async def require_admin(request: Request, settings: SettingsDep, metrics: MetricsDep) -> None:
    """Dependency of the admin routes: the caller must carry the admin token.

    Raises:
        HTTPException: 403 while the admin API is off or for a wrong token, 401
            without a bearer token; each refusal is counted as unauthorized.
    """
    refusal = admin_refusal(settings, request.headers)
    if refusal is not None:
        metrics.rejected.labels("unauthorized").inc()
        raise refusal


IsAdminDep = Annotated[bool, Depends(is_admin)]

# A name in the model registry, as the admin routes take it in their path.
RegistryName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
                                   description="registry name")]


@dataclass(frozen=True)
class RegistryEntry:
    """A name in the served model registry, and the watcher that serves it."""

    name: str
    watcher: RegistryWatcher


# One dependency for both, so that a malformed name is refused (422) before a
# service without a registry is (409): a dependency's own parameters are checked
# before it runs, a route's only after all its dependencies have.
async def get_registry_entry(request: Request, name: RegistryName) -> RegistryEntry:
    """The admin routes' ``{name}``, in the registry this service serves.

    Raises:
        RegistryError: The service serves no registry (409).
    """
    watcher = getattr(request.app.state, "watcher", None)
    if watcher is None:
        raise RegistryError("this service does not serve from a registry: start it with "
                            "`ocellus serve --registry DIR` (OCELLUS_REGISTRY)")
    return RegistryEntry(name, watcher)


RegistryEntryDep = Annotated[RegistryEntry, Depends(get_registry_entry)]


# The `model` query parameter of the inference routes, checked before the upload is
# read: a dependency is solved before the route runs and reads the body
# (`service.uploads.read_uploads`), so an unknown name (404), a model of another task
# (400) or a store still loading (503) is answered without reading it. The route
# then takes the model with `Inference.use`, which checks again.
async def classify_model(request: Request, model: Annotated[str | None, Query(
        description="model name; default: the first loaded classify model")] = None
                         ) -> str | None:
    store_of(request).get(model, "classify")
    return model


async def detect_model(request: Request, model: Annotated[str | None, Query(
        description="model name; default: the first loaded detect model")] = None
                       ) -> str | None:
    store_of(request).get(model, "detect")
    return model


ClassifyModelDep = Annotated[str | None, Depends(classify_model)]
DetectModelDep = Annotated[str | None, Depends(detect_model)]
