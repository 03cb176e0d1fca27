"""`ocellus registry seed-defaults`, run as the deployments' init containers run it: the
defaults go into an empty registry as the service would serve them without one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from models.export import read_manifest
from models.registry import ModelRegistry

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _seed(registry: Path, cache_dir: Path) -> dict:
    run = subprocess.run([sys.executable, "-m", "cli.main", "registry", "--registry",
                          str(registry), "seed-defaults", "--cache-dir", str(cache_dir)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def test_seed_defaults_publishes_the_int8_variants(
        tmp_path: Path, default_int8_variants: dict[str, tuple[Path, Path]]) -> None:
    cache_dir = default_int8_variants["imagenet"][0].parent.parent
    registry = tmp_path / "registry"
    out = _seed(registry, cache_dir)
    assert out["seeded"] == {"imagenet": "1", "coco": "1"}, out
    for name, default in (("imagenet", "imagenet"), ("coco", "coco-nanodet")):
        int8 = read_manifest(default_int8_variants[default][1])
        # verify: the weights' and the IR files' sha256s, read from the published copies.
        served = ModelRegistry(registry).verify(name, "1")
        assert served.precision == "int8" and int8.precision == "int8"
        assert served.weights_sha256 == int8.weights_sha256
        assert served.quantization["files"] == int8.quantization["files"]
    # Run again, as every pod start runs it: nothing more is published.
    assert _seed(registry, cache_dir)["seeded"] == {}
    assert sorted(p.name for p in (registry / "imagenet").iterdir() if p.name.isdigit()) == ["1"]


def test_seed_defaults_publishes_fp32_without_an_int8_variant(
        tmp_path: Path, default_int8_variants: dict[str, tuple[Path, Path]]) -> None:
    fp32 = default_int8_variants["imagenet"][0]
    cache_dir = tmp_path / "cache"  # the fp32 classifier alone: no variant, no NanoDet files
    shutil.copytree(fp32, cache_dir / "models" / fp32.name)
    out = _seed(tmp_path / "registry", cache_dir)
    assert out["seeded"] == {"imagenet": "1"}, out
    served = read_manifest(tmp_path / "registry" / "imagenet" / "1")
    assert served.precision == "fp32"
    assert served.weights_sha256 == read_manifest(fp32).weights_sha256
