"""Which default export the service serves: the int8 variant only when it is usable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import make_tiny_export

from models.defaults import current_int8_variant, default_classifier_backbone, int8_variant
from models.export import MANIFEST_FILE, sha256_file
from models.int8 import INT8_FILES
from service.app import model_paths
from service.settings import Settings


def _fake_variant(fp32: Path) -> Path:
    """An int8 variant beside `fp32` whose IR files are stand-ins (never loaded here)."""
    variant = int8_variant(fp32)
    shutil.copytree(fp32, variant)
    for name in INT8_FILES:
        (variant / name).write_bytes(name.encode())
    manifest = json.loads((variant / MANIFEST_FILE).read_text())
    manifest.update(precision="int8", quantization={
        "agreement": {"images": 48}, "files": {n: sha256_file(variant / n) for n in INT8_FILES}})
    (variant / MANIFEST_FILE).write_text(json.dumps(manifest))
    return variant


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A cache folder whose default classifier is a tiny export, with an int8 variant."""
    fp32 = make_tiny_export(tmp_path / "models" / f"imagenet-{default_classifier_backbone()}")
    _fake_variant(fp32)
    return tmp_path


def _served(cache: Path, **settings) -> Path:
    (path,) = model_paths(Settings(cache_dir=cache, **settings))  # no npm files: no detector
    return path


def test_auto_on_the_cpu_serves_the_int8_variant(cache: Path) -> None:
    assert _served(cache).name.endswith("-int8")
    assert _served(cache, backend="int8").name.endswith("-int8")


@pytest.mark.parametrize("settings", [{"backend": "eager"}, {"backend": "compiled"},
                                      {"device": "cuda"}])
def test_other_backends_and_devices_serve_fp32(cache: Path, settings: dict) -> None:
    assert not _served(cache, **settings).name.endswith("-int8")


@pytest.mark.parametrize("damage", ["weights", "ir_file", "manifest"])
def test_a_stale_or_damaged_variant_is_passed_over(cache: Path, damage: str) -> None:
    fp32 = cache / "models" / f"imagenet-{default_classifier_backbone()}"
    variant = int8_variant(fp32)
    if damage == "weights":  # made from other weights than the fp32 export's now
        manifest = json.loads((variant / MANIFEST_FILE).read_text())
        (variant / MANIFEST_FILE).write_text(json.dumps({**manifest, "weights_sha256": "0" * 64}))
    elif damage == "ir_file":
        (variant / INT8_FILES[1]).write_bytes(b"altered")
    else:
        (variant / MANIFEST_FILE).write_text("{")
    assert current_int8_variant(fp32) is None
    assert _served(cache) == fp32
