"""The app factory: settings in, a FastAPI app out.

Models load in a background task that the lifespan starts, so uvicorn listens
at once: /healthz answers during loading and warm-up (a liveness probe does not
restart a pod that is still loading), /readyz answers 503 ``loading`` and the
inference routes 503 with Retry-After until the models are in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import torch
from fastapi import FastAPI

from models.export import read_manifest
from models.registry import ModelRegistry
from service.auth import ApiKeyMiddleware, api_keys_of
from service.batcher import ServingConfig
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.middleware import (
    BodySizeLimitMiddleware,
    CancelOnDisconnectMiddleware,
    InFlightLimitMiddleware,
    RequestMiddleware,
    V2ErrorMiddleware,
)
from service.model_store import ModelStore, ServedModel
from service.registry_watch import RegistryWatcher
from service.routes import ROUTERS, console
from service.settings import Settings
from service.tracing import setup_tracing
from service.uploads import document_upload_limits

log = logging.getLogger(__name__)

GIL_SWITCH_INTERVAL_S = 0.0005


def model_paths(settings: Settings) -> list[Path]:
    """The exports to serve: the given ones, or the embedded defaults."""
    if settings.models or not settings.default_models or settings.registry:
        return list(settings.models)
    from models.defaults import default_classifier_export, default_detector_export, served_variant

    # The detector needs the npm package (`make setup`); without it, a warning says so.
    detector = default_detector_export(settings.cache_dir)
    exports = [default_classifier_export(settings.cache_dir), *([detector] if detector else [])]
    if settings.backend not in ("auto", "int8") or settings.device != "cpu":
        return exports
    # The int8 variant where `ocellus defaults` made one that passed its gate: the faster.
    return [served_variant(export) for export in exports]


def _prepare(store: ModelStore, path: Path) -> ServedModel:
    # Intra-op threads are set per thread where the work runs: all of them on each
    # model's inference thread (service/batcher.py), one on decode threads. Loading
    # needs none: a thread that formed an OpenMP team of its own keeps a helper
    # spinning that slows the forwards (measured: a 2-thread forward on a worker
    # thread 17-19 ms with such a team alive, 10 ms without).
    torch.set_num_threads(1)
    return store.prepare(path)


def _name_of(path: Path) -> str:
    try:
        return read_manifest(path).name
    except Exception:  # the manifest is what failed: name the model by its folder
        return path.name


async def _load_models(store: ModelStore, settings: Settings, metrics: Metrics,
                       watcher: RegistryWatcher | None, stop: asyncio.Event) -> None:
    """Load every model, one at a time off the event loop; a failure refuses that one only."""
    try:
        try:
            paths = await anyio.to_thread.run_sync(model_paths, settings)
        except Exception as exc:  # e.g. the default model's weights cannot be had
            log.error("the default models cannot be built: %s", exc,
                      extra={"event": "model_refused", "model": "default", "reason": str(exc)})
            metrics.record_load("default", False)
            store.refuse("default", exc, path=settings.cache_dir, root=settings.cache_dir)
            paths = []
        for path in paths:
            if stop.is_set():
                return
            try:
                served = await anyio.to_thread.run_sync(_prepare, store, path)
            except Exception as exc:  # bad manifest, hash, weights: refuse this export only
                name = await anyio.to_thread.run_sync(_name_of, path)
                log.error("model %s (%s) refused: %s", name, path, exc,
                          extra={"event": "model_refused", "model": name, "reason": str(exc)})
                metrics.record_load(name, False)
                store.refuse(name, exc, path=Path(path).resolve(),
                             root=Path(path).resolve().parent)
                continue
            if stop.is_set():
                served.close()
                return
            old = store.swap(served)  # on the event loop's thread, where requests read it
            if old is not None:  # two exports of one name: the last one serves
                old.close()
            metrics.record_load(served.name, True)
        if watcher is not None:
            await watcher.load_initial(stop)
    finally:
        store.loading = False
    log.info("ready: %s%s", ", ".join(f"{m.name} ({m.task})" for m in store.models.values())
             or "no model", "; refused: " + ", ".join(store.refused) if store.refused else "")


async def _load_then_poll(store: ModelStore, settings: Settings, metrics: Metrics,
                          watcher: RegistryWatcher | None, stop: asyncio.Event) -> None:
    await _load_models(store, settings, metrics, watcher, stop)
    if watcher is not None and settings.registry_poll_seconds > 0 and not stop.is_set():
        await watcher.poll_forever()


def _log_failure(task: asyncio.Task) -> None:
    # Logged when it happens, not only when shutdown awaits the task.
    if not task.cancelled() and task.exception() is not None:
        log.error("loading or polling the models stopped", exc_info=task.exception())


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    # The inference and decode threads need the GIL for moments between long GIL-free
    # stretches; at Python's default 5 ms switch interval the event loop thread keeps them
    # waiting. 0.5 ms measured: p99 at concurrency 1 26.6 -> 17.8 ms, c=8 69 -> 83 req/s.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    metrics: Metrics = app.state.metrics
    store = ModelStore(device=settings.device, serving=ServingConfig.from_settings(settings),
                       metrics=metrics, decode_threads=settings.decode_threads)
    app.state.store = store
    metrics.models.source = lambda: list(store.models.values())
    metrics.models.refused = lambda: [n for n in store.refused if n not in store.models]
    watcher = app.state.watcher = RegistryWatcher(
        ModelRegistry(settings.registry), store, metrics,
        poll_seconds=settings.registry_poll_seconds,
        drain_seconds=settings.reload_drain_seconds) if settings.registry else None
    # Loading runs in the background: uvicorn listens once the lifespan has yielded.
    store.loading, stop = True, asyncio.Event()
    background = asyncio.create_task(_load_then_poll(store, settings, metrics, watcher, stop))
    background.add_done_callback(_log_failure)
    try:
        yield
    finally:
        stop.set()
        if not store.loading:  # polling: stop it now
            background.cancel()
        # While loading, wait: the model being loaded is closed, the others are skipped.
        # A failure was logged when it happened (_log_failure); the models close below.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await background
        if watcher is not None:
            watcher.close()
        store.close()
        if app.state.tracing is not None:  # send the spans still buffered, off the loop
            await anyio.to_thread.run_sync(app.state.tracing.force_flush)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. Nothing is loaded until the lifespan starts."""
    settings = settings or Settings()
    app = FastAPI(
        title="Ocellus",
        version="0.1.0",
        description=(
            "Image classification and object detection.\n\n"
            f"Limits: {settings.max_upload_bytes} bytes per file, {settings.max_files} files "
            f"per request, {settings.max_image_pixels} pixels per image, "
            f"{settings.max_in_flight} inference requests in flight, "
            f"{settings.request_timeout_s:g} s per request (docs/serving.md, Limits)."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/console", console.ASSETS, name="console")  # the console's static files
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes,
                       metrics=app.state.metrics)
    app.add_middleware(CancelOnDisconnectMiddleware, metrics=app.state.metrics)
    # Outside the two above: a refused request costs no body read and no watcher.
    app.add_middleware(InFlightLimitMiddleware, max_in_flight=settings.max_in_flight,
                       metrics=app.state.metrics)
    app.add_middleware(ApiKeyMiddleware, keys=api_keys_of(settings), metrics=app.state.metrics)
    app.add_middleware(V2ErrorMiddleware)  # outside the middleware whose errors it reshapes
    app.add_middleware(RequestMiddleware, metrics=app.state.metrics)  # outermost
    app.state.tracing = setup_tracing(app)  # None unless the OTEL_* variables ask
    build_openapi = app.openapi
    app.openapi = lambda: document_upload_limits(  # the routes' body, with these limits
        build_openapi(), max_files=settings.max_files,
        max_upload_bytes=settings.max_upload_bytes)
    return app
