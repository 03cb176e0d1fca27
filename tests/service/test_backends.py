"""Backends: each splits by request exactly as eager does; `auto` takes the fastest that agrees,
checked through the same split (tiny models, deliberately broken fast paths)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from models.classification.predictor import ClassificationPredictor
from models.detection import Detector
from models.detection.predictor import DetectionPredictor
from models.export import Manifest
from models.photos import real_images
from models.predictor import rows
from models.preprocess import Preprocessing
from service import backends, compile_cache
from service.backends import BUILDERS, build_compiled, select_backend
from service.batcher import ServingConfig
from service.model_store import ModelStore
from service.settings import Settings

SIZE = 64
# `compiled` builds its graph in a child process: seconds a build.
COMPILES = pytest.mark.slow


def _detector() -> DetectionPredictor:
    torch.manual_seed(0)
    model = Detector("efficientnet_lite0", 3, width=32, img_size=SIZE, backbone_weights=None)
    manifest = Manifest(task="detect", architecture={"name": "detector", "args": model.model_args},
                        labels=["x", "y", "z"], preprocessing=model.preprocessing.to_dict())
    return DetectionPredictor(model, manifest)


@pytest.fixture(scope="module")
def detector() -> DetectionPredictor:
    return _detector()


def _inputs(predictor: DetectionPredictor, n: int) -> tuple[torch.Tensor, list]:
    gen = torch.Generator().manual_seed(n)
    images = [torch.randint(0, 256, (3, 40 + 7 * i, 90 - 5 * i), dtype=torch.uint8,
                            generator=gen) for i in range(n)]
    inputs, metas = zip(*(predictor.preprocess(im) for im in images), strict=True)
    return torch.stack(inputs), list(metas)


@pytest.mark.parametrize("name", [
    "eager",
    pytest.param("compiled", marks=COMPILES),
])
def test_every_output_of_every_backend_is_batch_major(detector, name: str) -> None:
    x, _ = _inputs(detector, 5)
    outputs = BUILDERS[name](detector, torch.zeros(2, 3, SIZE, SIZE))(x)
    assert all(t.shape[0] == 5 for t in outputs), (name, [t.shape for t in outputs])


@COMPILES
def test_compiled_builds_leave_nothing_behind_in_this_process(detector) -> None:
    # TorchScript keeps what it traces and freezes in its process-wide compilation unit
    # for good (about 30 MB per EfficientNet-Lite0 build): a service that hot-reloads
    # fp32 exports would grow with each reload. The graph is built in a child process.
    # The process-wide unit is private to torch; the builds' leak was measured in it
    # (1,260 methods added by these two builds when they ran in this process).
    functions = torch.jit._state._python_cu.get_functions
    before = len(functions())
    for _ in range(2):
        BUILDERS["compiled"](detector, torch.zeros(2, 3, SIZE, SIZE))(torch.zeros(1, 3, SIZE, SIZE))
    assert len(functions()) == before


def test_a_compiled_build_over_its_time_is_stopped_with_a_clear_error(detector, monkeypatch
                                                                      ) -> None:
    # The real child, given less time than its Python start-up and torch import take.
    monkeypatch.setattr(backends, "COMPILE_TIMEOUT_S", 0.2)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"took over 0.2 s; the build was stopped"):
        BUILDERS["compiled"](detector, torch.zeros(2, 3, SIZE, SIZE))
    assert time.monotonic() - started < 10


CACHE_HIT = "loaded from the compile cache"


@COMPILES
def test_a_kept_graph_is_loaded_by_the_next_build_not_rebuilt(detector, tmp_path,
                                                              caplog) -> None:
    caplog.set_level(logging.INFO, logger="service.compile_cache")
    x, _ = _inputs(detector, 3)
    reference = detector.eager_forward(x)
    example = torch.zeros(2, 3, SIZE, SIZE)
    first = build_compiled(detector, example, compile_cache=tmp_path)
    kept = list(tmp_path.iterdir())
    assert [p.name for p in kept] == [f"{compile_cache.key(detector, example)}.pt"]
    # A first build: nothing to load, nothing to warn about.
    assert CACHE_HIT not in caplog.text and "does not load" not in caplog.text
    second = build_compiled(detector, example, compile_cache=tmp_path)
    assert CACHE_HIT in caplog.text  # loaded: no child built it
    for got in (first(x), second(x)):
        for g, r in zip(got, reference, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)
    # A damaged entry is rebuilt and replaced.
    kept[0].write_bytes(b"not a graph")
    caplog.clear()
    rebuilt = build_compiled(detector, example, compile_cache=tmp_path)
    assert CACHE_HIT not in caplog.text and "does not load, rebuilding" in caplog.text
    assert kept[0].stat().st_size > 1000
    for g, r in zip(rebuilt(x), reference, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def test_the_graph_key_follows_the_weights_and_the_shape_not_the_objects(detector) -> None:
    example = torch.zeros(2, 3, SIZE, SIZE)
    key = compile_cache.key(detector, example)
    # Another predictor of the same weights (as another process would load): the same key.
    twin = _detector()
    twin.manifest.name, twin.manifest.version = "renamed", "7"
    assert twin is not detector and compile_cache.key(twin, example) == key
    assert compile_cache.key(detector, torch.zeros(2, 3, SIZE + 32, SIZE + 32)) != key
    with torch.no_grad():
        next(twin.model.parameters()).mul_(1.001)
    assert compile_cache.key(twin, example) != key


@COMPILES
def test_the_cache_keeps_the_latest_graphs_and_an_unwritable_one_costs_only_the_keeping(
        detector, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(compile_cache, "MAX_ENTRIES", 1)
    cache = tmp_path / "cache"
    for size in (SIZE, SIZE + 32):
        build_compiled(detector, torch.zeros(2, 3, size, size), compile_cache=cache)
    newest = f"{compile_cache.key(detector, torch.zeros(2, 3, SIZE + 32, SIZE + 32))}.pt"
    assert [p.name for p in cache.iterdir()] == [newest]
    # A file where the cache should be: the graph is built and served, nothing kept.
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    x, _ = _inputs(detector, 2)
    outputs = build_compiled(detector, torch.zeros(2, 3, SIZE, SIZE), compile_cache=blocked)(x)
    assert all(t.shape[0] == 2 for t in outputs) and blocked.read_text() == ""


@COMPILES
def test_the_model_store_keeps_compiled_graphs_in_the_services_cache_dir(
        tiny_exports, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="service.compile_cache")
    serving = ServingConfig.from_settings(Settings(cache_dir=tmp_path, backend="compiled",
                                                   tune_batch_size=False, max_batch_size=2))
    assert serving.compile_cache == tmp_path / "compiled"
    store = ModelStore(serving=serving)
    try:
        store.load(tiny_exports[0])
        assert CACHE_HIT not in caplog.text
        store.load(tiny_exports[0])  # finds the graph the first load kept
        assert CACHE_HIT in caplog.text
        assert len(list((tmp_path / "compiled").glob("*.pt"))) == 1
        assert store.get(None, "classify").backend == "compiled"
    finally:
        store.close()


@COMPILES
def test_compiled_detector_answers_each_request_as_eager_does_alone(detector) -> None:
    # Three requests with different options share one forward of 5 images, as in the
    # batcher when their options differ: each is cut out of the batch by its rows.
    x, metas = _inputs(detector, 5)
    compiled = BUILDERS["compiled"](detector, torch.zeros(2, 3, SIZE, SIZE))
    outputs = compiled(x)
    requests = [(0, 1, {"conf": 0.0, "max_det": 5}), (1, 3, {"conf": 0.0, "max_det": 9}),
                (3, 5, {"conf": 0.0, "agnostic": True, "max_det": 7})]
    for start, stop, options in requests:
        got = detector.postprocess(rows(outputs, start, stop, 5), metas[start:stop], **options)
        alone = detector.postprocess(detector.forward(x[start:stop]), metas[start:stop],
                                     **options)
        assert [len(d) for d in got] == [len(d) for d in alone] and any(got)
        for g_img, a_img in zip(got, alone, strict=True):
            for g, a in zip(g_img, a_img, strict=True):
                assert g.class_id == a.class_id
                assert g.score == pytest.approx(a.score, abs=1e-4)
                assert g.box == pytest.approx(a.box, abs=1e-2)


def test_rows_refuses_outputs_that_are_not_batch_major() -> None:
    anchors = torch.zeros(21, 2)  # shared by every image, as a traced graph once returned
    with pytest.raises(ValueError, match="batch-major outputs of 4 rows"):
        rows((torch.zeros(4, 21, 3), anchors), 1, 2, 4)


def _shared_anchors(predictor, example):
    """A fast path right for whole batches, wrong for a request cut out of one: anchors and
    strides come back ``(A, 2)`` and ``(A, 1)``, not batch-major."""
    def forward(batch):
        dist, cls, anchors, strides = predictor.forward(batch)
        return dist, cls, anchors[0], strides[0]
    return forward


def test_auto_refuses_a_backend_whose_outputs_cannot_be_split_by_request(detector) -> None:
    _, report = select_backend(detector, "auto", real_images(limit=8), batch_size=4,
                               builders={"eager": _slow_eager,
                                         "shared": _shared_anchors})
    assert report.name == "eager", report
    assert "shared failed on real images" in report.reason
    assert "batch-major" in report.reason


class _Tiny(nn.Module):
    """(B, 3, 32, 32) → (B, 10) logits: a random conv net, enough to tell paths apart."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _tiny_predictor() -> ClassificationPredictor:
    manifest = Manifest(task="classify", architecture={"name": "tiny"},
                        labels=[str(i) for i in range(10)],
                        preprocessing=Preprocessing(crop_size=32, resize_size=36).to_dict())
    return ClassificationPredictor(_Tiny(), manifest)


def _slow_eager(predictor, example):
    """The eager reference, made slower so that every candidate is timed as faster.

    By enough that a candidate's first, unwarmed call on a loaded machine stays under
    `select_backend`'s 4x-slower-than-eager cut, which would skip it untested."""
    def forward(batch):
        time.sleep(0.1)
        return predictor.forward(batch)
    return forward


def _broken(predictor, example):
    """A 'fast path' that is fast and wrong: it returns noise of the right shape."""
    gen = torch.Generator().manual_seed(0)
    return lambda batch: torch.randn(len(batch), len(predictor.labels), generator=gen)


def test_auto_backend_falls_back_when_agreement_is_too_low() -> None:
    predictor = _tiny_predictor()
    samples = real_images(limit=24)
    assert len(samples) == 24
    _, report = select_backend(predictor, "auto", samples, batch_size=4,
                               builders={"eager": _slow_eager, "broken": _broken})
    assert report.throughput["broken"] > report.throughput["eager"]
    assert report.name == "eager"
    assert report.agreement["broken"] < 0.995
    assert "broken agreement" in report.reason and "fell back" in report.reason


@COMPILES
def test_auto_backend_takes_a_fast_path_that_agrees() -> None:
    predictor = _tiny_predictor()
    fn, report = select_backend(predictor, "auto", real_images(limit=24), batch_size=4,
                                builders={"eager": _slow_eager,
                                          "broken": _broken,
                                          "compiled": BUILDERS["compiled"]})
    assert report.name == "compiled", report
    assert report.agreement["compiled"] >= 0.995
    x = torch.randn(3, 3, 32, 32)  # a batch size other than the traced one
    torch.testing.assert_close(fn(x), predictor.forward(x), rtol=1e-4, atol=1e-4)


def test_unknown_backend_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        select_backend(_tiny_predictor(), "tensorrt", [])


def _photo_tree(root: Path, folders: dict[str, int]) -> dict[Path, int]:
    """Solid-grey PNGs, a distinct shade per file: {path: shade}."""
    shades = {}
    for folder, n in folders.items():
        (root / folder).mkdir(parents=True)
        for i in range(n):
            shade = 10 * len(shades) + 5
            Image.new("RGB", (24, 16), (shade,) * 3).save(root / folder / f"{i}.png")
            shades[root / folder / f"{i}.png"] = shade
    return shades


def _shades(images: list[torch.Tensor]) -> set[int]:
    return {int(im[0, 0, 0]) for im in images}


def test_the_agreement_check_finds_both_tasks_own_val_images(tmp_path: Path) -> None:
    """`ocellus train` names its val images the same way for every task (dataset.val_dir)."""
    from training.export import dataset_entry

    yolo = _photo_tree(tmp_path / "yolo", {"images/train": 3, "images/val": 2})
    folder = _photo_tree(tmp_path / "tree", {"train/a": 2, "train/b": 2, "val/a": 2, "val/b": 1})
    for shades, names, root in ((yolo, ["x"], tmp_path / "yolo"),
                                (folder, ["a", "b"], tmp_path / "tree")):
        train = [(p,) for p in shades if "train" in p.parts]
        val = [(p,) for p in shades if "val" in p.parts]
        entry = dataset_entry(root, names, root, train=train, val=val)
        manifest = Manifest(task="detect", architecture={"name": "detector"}, labels=names,
                            preprocessing={}, dataset=entry)
        found = real_images(manifest, limit=len(val))
        assert _shades(found) == {shades[p] for (p,) in val}, entry

    # A split drawn from one tree has no folder of val images only: bundled photos then.
    tree = tmp_path / "tree" / "train"
    drawn = dataset_entry(tree, ["a", "b"], tree, train=[(tree / "a/0.png",), (tree / "b/0.png",)],
                          val=[(tree / "a/1.png",), (tree / "b/1.png",)])
    assert drawn["val_dir"] is None
    # Manifests written before val_dir named a classifier's ImageFolder tree `root`.
    old = Manifest(task="classify", architecture={"name": "classifier"}, labels=["a", "b"],
                   preprocessing={}, dataset={"root": str(tmp_path / "tree")})
    assert _shades(real_images(old, limit=3)) == {shades for p, shades in folder.items()
                                                  if "val" in p.parts}
