"""The model store's memory: a load's objects are frozen out of the cyclic GC
(`settle_heap`), so a retired model must be freed by refcounting alone."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from service.batcher import ServingConfig
from service.metrics import Metrics
from service.model_store import ModelStore

pytestmark = pytest.mark.slow  # each case loads and warms up two models: 2.5-3.5 s


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Give the rest of the session its objects back to the cyclic GC."""
    yield
    gc.unfreeze()


@pytest.mark.parametrize("backend", ["eager", "compiled", "int8", "auto", "auto-fp32"])
def test_a_retired_model_is_freed_though_its_load_was_frozen(
        backend: str, unfrozen: None, request: pytest.FixtureRequest) -> None:
    if backend in ("int8", "auto"):  # the defaults' variants; `auto` is how they are served
        exports = [int8 for _, int8 in request.getfixturevalue("default_int8_variants").values()]
    else:
        exports = [request.getfixturevalue("tiny_exports")[0],
                   request.getfixturevalue("tiny_detector_export")]
    # auto on an fp32 export builds and times each candidate (compiled: in a child
    # process) and serves the fastest that agrees with eager.
    chosen = {"auto": {"int8"}, "auto-fp32": {"eager", "compiled", "bf16"}}.get(
        backend, {backend})
    backend = backend.removesuffix("-fp32")
    store = ModelStore(serving=ServingConfig(backend=backend, tune_batch_size=False),
                       metrics=Metrics())  # as the service builds it: batch metrics too
    try:
        for export in exports:
            frozen = gc.get_freeze_count()
            served = store.prepare(export)
            assert gc.get_freeze_count() > frozen  # the load's objects left the cyclic GC
            assert served.backend in chosen
            refs = [weakref.ref(o) for o in (served, served.predictor, served.predictor.model,
                                             served.batcher)]
            served.close()
            del served
            # No gc.collect(): a cycle through the model would keep it for ever, frozen.
            assert [r() for r in refs] == [None] * len(refs)
    finally:
        store.close()
