"""Serving from a model registry, with zero-downtime hot reload.

A reload loads, verifies and warms the new version beside the old one (off
the event loop), then switches with one dict assignment on the event loop's
thread. Requests that already hold the old version finish on it: it is closed
when the last of them has answered (at most `drain_seconds` later). A version
that fails to load (bad hash, bad manifest, wrong task) is refused: the old
version keeps serving, and the failure is logged and counted in
``ocellus_model_reloads_total{result="failure"}``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from dataclasses import dataclass

import anyio
import torch

from models.errors import ModelNotReadyError, TaskMismatchError, VersionRefusedError
from models.export import read_manifest
from models.registry import CURRENT_FILE, ModelRegistry
from service.metrics import Metrics
from service.model_store import ModelStore, ServedModel

log = logging.getLogger(__name__)

# What `RegistryWatcher.refused` holds for a name whose ``current`` cannot be read.
_UNREADABLE = ""


@dataclass
class ReloadResult:
    """What a reload did: ``"reloaded"`` (switched) or ``"unchanged"`` (already served)."""

    name: str
    version: str
    status: str
    previous: str | None = None


class RegistryWatcher:
    """Keeps `store` serving each registry name's current version.

    Args:
        registry: The registry to serve from.
        store: The service's models.
        metrics: Where loads and reloads are counted.
        poll_seconds: How often `poll_forever` looks for a new ``current`` (0: never).
        drain_seconds: The longest a replaced version waits for the requests that
            hold it before it is closed anyway (keep it above the request timeout).
    """

    def __init__(self, registry: ModelRegistry, store: ModelStore, metrics: Metrics, *,
                 poll_seconds: float = 5.0, drain_seconds: float = 30.0) -> None:
        self.registry = registry
        self.store = store
        self.metrics = metrics
        self.poll_seconds = poll_seconds
        self.drain_seconds = drain_seconds
        # name → the version last refused (_UNREADABLE: its ``current``), so polling does
        # not retry (and recount) it every few seconds; an admin reload retries it.
        self.refused: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._retiring: dict[asyncio.Task, ServedModel] = {}

    def _prepare(self, name: str, version: str, served: ServedModel | None) -> ServedModel:
        """Blocking: verify and load `version`, refusing a change of task."""
        torch.set_num_threads(1)  # loading needs no OpenMP team (see service/app.py)
        path = self.registry.path(name, version)
        manifest = read_manifest(path)
        if served is not None and manifest.task != served.task:
            raise TaskMismatchError(f"{name} version {version} is a {manifest.task!r} model, "
                                    f"the served version {served.manifest.version} is "
                                    f"{served.task!r}; a name keeps its task")
        return self.store.prepare(path, name=name)

    async def load_initial(self, stop: asyncio.Event | None = None) -> None:
        """At start-up: load every name's current version, one at a time, off the loop.

        A name whose ``current`` is empty, garbage or unreadable, or whose version
        fails to load, is refused (logged, counted, listed by /readyz); the other
        names load and serve. Returns early once `stop` is set (shutdown).
        """
        try:
            names = await anyio.to_thread.run_sync(self.registry.names)
        except OSError as exc:  # an unreadable mount: refuse the registry, say why, go on
            log.error("registry %s cannot be read: %s", self.registry.root, exc)
            self.metrics.record_load("registry", False)
            self.store.refuse("registry", exc, path=self.registry.root, root=self.registry.root)
            return
        if not names:
            log.warning("registry %s has no name with a current version: /readyz answers 503 "
                        "until one is promoted (`ocellus registry ... publish --promote`)",
                        self.registry.root)
        for name in names:
            async with self._lock:
                if stop is not None and stop.is_set():
                    return
                if name in self.store.models:  # an admin reload was quicker
                    continue
                version = None
                try:
                    version = await anyio.to_thread.run_sync(self.registry.current, name)
                    if version is None:  # ``current`` removed since `names`
                        continue
                    served = await anyio.to_thread.run_sync(self._prepare, name, version, None)
                except Exception as exc:  # any failure refuses this name, not the service
                    self._refuse(name, version, exc)
                    continue
                if stop is not None and stop.is_set():
                    served.close()
                    return
                self.store.swap(served)  # no request holds this name yet: nothing to retire
                self.metrics.record_load(name, True)

    def _refuse(self, name: str, version: str | None, exc: Exception, *,
                reload: bool = False) -> None:
        """Log, count and record a refused version (None: ``current`` is unreadable)."""
        served = self.store.models.get(name)
        log.error("registry: %s %s refused, %s: %s", name,
                  f"version {version}" if version is not None else f"{CURRENT_FILE} file",
                  f"still serving version {served.manifest.version}" if served
                  else "nothing served", exc,
                  extra={"event": "model_refused", "model": name, "version": version,
                         "serving": served.manifest.version if served else None,
                         "reason": str(exc)})
        self.metrics.record_load(name, False, reload=reload)
        self.refused[name] = _UNREADABLE if version is None else version
        path = self.registry.root / name / (CURRENT_FILE if version is None else version)
        self.store.refuse(name, exc, version=version, path=path, root=self.registry.root)

    async def reload(self, name: str, *, force: bool = False) -> ReloadResult:
        """Serve `name`'s current version if it is not served yet.

        Args:
            force: Retry a version that was refused before (the admin call does).

        Raises:
            ModelNotReadyError: The registry has no current version of `name`.
            VersionRefusedError: The version failed to load; the old one still serves.
        """
        async with self._lock:
            try:
                version = await anyio.to_thread.run_sync(self.registry.current, name)
            except Exception as exc:  # empty, garbage or unreadable ``current``
                if force or self.refused.get(name) != _UNREADABLE:
                    self._refuse(name, None, exc, reload=True)
                raise VersionRefusedError(f"{name}: its {CURRENT_FILE} file cannot be read, "
                                          f"nothing new served: {exc}") from exc
            if version is None:
                raise ModelNotReadyError(f"the registry {self.registry.root} has no current "
                                         f"version of {name!r}; names: {self.registry.names()}")
            served = self.store.models.get(name)
            if served is not None and served.path == self.registry.path(name, version):
                return ReloadResult(name, version, "unchanged", served.manifest.version)
            if not force and self.refused.get(name) == version:
                raise VersionRefusedError(f"{name} version {version} was refused before")
            try:
                new = await anyio.to_thread.run_sync(self._prepare, name, version, served)
            except Exception as exc:  # bad hash, manifest, task, weights: keep the old one
                self._refuse(name, version, exc, reload=True)
                raise VersionRefusedError(
                    f"{name} version {version} was refused and not served: {exc}") from exc
            old = self.store.swap(new)
            self.metrics.record_load(name, True, reload=True)
            self.refused.pop(name, None)
            if old is not None:
                self._retire(old)
            previous = old.manifest.version if old is not None else None
            log.info("registry: %s switched from version %s to %s", name, previous, version,
                     extra={"event": "model_reloaded", "model": name, "version": version,
                            "previous": previous})
            return ReloadResult(name, version, "reloaded", previous)

    async def rollback(self, name: str) -> ReloadResult:
        """Point ``current`` back at the previous promotion and serve it."""
        await anyio.to_thread.run_sync(
            lambda: self.registry.rollback(name, reason="admin API"))
        return await self.reload(name, force=True)

    def _retire(self, old: ServedModel) -> None:
        # In a fresh context: not the request's (an admin reload) that happened to retire it.
        task = asyncio.get_running_loop().create_task(self._drain_and_close(old),
                                                      context=contextvars.Context())
        self._retiring[task] = old
        task.add_done_callback(lambda t: self._retiring.pop(t, None))

    async def _drain_and_close(self, old: ServedModel) -> None:
        """Close `old` once no request holds it: none fails, and its memory goes at once."""
        started, held = time.monotonic(), old.holders
        drained = await old.drained(self.drain_seconds)
        waited = time.monotonic() - started
        if drained:
            log.info("registry: %s version %s drained (%d request(s) held it) in %.2f s; "
                     "closing it", old.name, old.manifest.version, held, waited)
        else:
            log.warning("registry: %s version %s still held by %d request(s) after %.0f s "
                        "(OCELLUS_RELOAD_DRAIN_SECONDS); closing it", old.name,
                        old.manifest.version, old.holders, waited)
        await anyio.to_thread.run_sync(old.close)

    async def poll_forever(self) -> None:
        """Reload every name whose ``current`` changed, every `poll_seconds`."""
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                names = await anyio.to_thread.run_sync(self.registry.names)
            except OSError:  # an unreadable mount: keep serving what is loaded, try again
                log.exception("registry %s cannot be read", self.registry.root)
                continue
            for name in names:
                try:
                    await self.reload(name)
                except VersionRefusedError:
                    pass  # logged and counted once, when it was refused
                except Exception:  # keep polling whatever one name does
                    log.exception("registry: polling %s failed", name)

    def close(self) -> None:
        """Close the replaced versions still draining (at shutdown)."""
        for task, model in list(self._retiring.items()):
            task.cancel()
            model.close()
        self._retiring.clear()
