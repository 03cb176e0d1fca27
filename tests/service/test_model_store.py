"""The model store's memory: a load's objects are frozen out of the cyclic GC
(`settle_heap`), so a retired model must be freed by refcounting alone."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from service.backends import BUILDERS
from service.batcher import ServingConfig
from service.metrics import Metrics
from service.model_store import ModelStore

pytestmark = pytest.mark.slow  # each case loads and warms up two models: 2.5 to 15 s


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Give the rest of the session its objects back to the cyclic GC."""
    yield
    gc.unfreeze()


@pytest.mark.parametrize(("backend", "int8_exports", "served_as"), [
    ("eager", False, {"eager"}),
    ("compiled", False, {"compiled"}),
    ("int8", True, {"int8"}),
    pytest.param("auto", True, {"int8"}, id="auto-int8"),  # how the defaults are served
    # auto on an fp32 export builds and times each candidate, compiled among them.
    pytest.param("auto", False, {"eager", "compiled", "bf16"}, id="auto-fp32"),
])
def test_a_retired_model_is_freed_though_its_load_was_frozen(
        backend: str, int8_exports: bool, served_as: set[str], unfrozen: None,
        request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if int8_exports:  # the defaults' variants
        exports = [int8 for _, int8 in request.getfixturevalue("default_int8_variants").values()]
    else:
        exports = [request.getfixturevalue("tiny_exports")[0],
                   request.getfixturevalue("tiny_detector_export")]
    # The real builder, counted: a compiled candidate that failed to build (in its
    # child process) would leave `auto` serving eager, unseen.
    build, built = BUILDERS["compiled"], []

    def counted(predictor, example):
        forward = build(predictor, example)
        built.append(1)
        return forward

    monkeypatch.setitem(BUILDERS, "compiled", counted)
    store = ModelStore(serving=ServingConfig(backend=backend, tune_batch_size=False),
                       metrics=Metrics())  # as the service builds it: batch metrics too
    try:
        for export in exports:
            frozen = gc.get_freeze_count()
            served = store.prepare(export)
            assert gc.get_freeze_count() > frozen  # the load's objects left the cyclic GC
            assert served.backend in served_as
            refs = [weakref.ref(o) for o in (served, served.predictor, served.predictor.model,
                                             served.batcher)]
            served.close()
            del served
            # No gc.collect(): a cycle through the model would keep it for ever, frozen.
            assert [r() for r in refs] == [None] * len(refs)
        if "compiled" in served_as:
            assert len(built) == len(exports)
    finally:
        store.close()
