"""The app factory: settings in, a FastAPI app out. Models load in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import torch
from fastapi import FastAPI

from service.errors import install_error_handlers
from service.metrics import Metrics
from service.middleware import BodySizeLimitMiddleware, MetricsMiddleware
from service.model_store import ModelStore
from service.routes import router
from service.settings import Settings

log = logging.getLogger(__name__)


def model_paths(settings: Settings) -> list[Path]:
    """The exports to serve: the given ones, or the embedded defaults."""
    if settings.models or not settings.default_models:
        return list(settings.models)
    from models.defaults import default_classifier_export

    return [default_classifier_export(settings.cache_dir)]


def _load_all(store: ModelStore, settings: Settings) -> None:
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    for path in model_paths(settings):
        store.load(path)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    store = ModelStore(device=settings.device)
    app.state.store = store
    # Loading is blocking work: off the event loop, so /healthz answers meanwhile.
    await anyio.to_thread.run_sync(_load_all, store, settings)
    log.info("ready: %s", ", ".join(f"{m.name} ({m.task})" for m in store.models.values()))
    try:
        yield
    finally:
        store.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. Nothing is loaded until the lifespan starts."""
    settings = settings or Settings()
    app = FastAPI(
        title="Ocellus",
        version="0.1.0",
        description=(
            "Image classification and object detection.\n\n"
            f"Limits: {settings.max_upload_bytes} bytes per file, {settings.max_files} files "
            f"per request, {settings.max_image_pixels} pixels per image."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    install_error_handlers(app)
    app.include_router(router)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
