"""Shared fixtures: real data sets, trained and tiny exports, a real uvicorn server.

Helpers that tests import as functions are in helpers.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import QUICK_START, free_port, make_detector_export, make_tiny_export

from models.export import Manifest

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DARKNET = Path("/usr/share/darknet/data")


# The cache folder `make setup` fills (the Makefile's CACHE_DIR).
SETUP_CACHE = Path(os.environ.get("OCELLUS_CACHE_DIR", Path.home() / ".cache" / "ocellus"))


def _missing_from_setup(message: str) -> None:
    """`make setup` makes it, so in CI a miss fails instead of skipping."""
    if os.environ.get("CI", "").lower() in ("1", "true"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def nanodet_source_files() -> tuple[Path, Path]:
    """NanoDet's npm (json, bin) files in the cache, which `make setup` fetches."""
    from models.detection.nanodet import nanodet_files

    json_path, bin_path = nanodet_files(SETUP_CACHE)
    if not (json_path.is_file() and bin_path.is_file()):
        _missing_from_setup(f"NanoDet files not in {json_path.parent}; "
                            "run `make setup` (or scripts/fetch-nanodet.sh)")
    return json_path, bin_path


@pytest.fixture(scope="session")
def default_int8_variants() -> dict[str, tuple[Path, Path]]:
    """Model name → (fp32 export, int8 variant) of the defaults that `make setup` quantized
    (`ocellus defaults`) in the cache."""
    from models.defaults import DETECTOR_NAME, current_int8_variant, default_classifier_backbone

    found = {}
    for name, folder in (("imagenet", f"imagenet-{default_classifier_backbone()}"),
                         ("coco-nanodet", DETECTOR_NAME)):
        fp32 = SETUP_CACHE / "models" / folder
        if (int8 := current_int8_variant(fp32)) is None:
            _missing_from_setup(f"no int8 variant of the default {name!r} in {SETUP_CACHE}; "
                                "run `make setup` (or `ocellus defaults`)")
        found[name] = (fp32, int8)
    return found


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for the module, restored afterwards.

    On a shared few-core machine, intra-op threads oversubscribe the CPU and a
    224px forward takes seconds instead of ~50 ms.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def torch_hub_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty torch hub folder for the test (``torch.hub.set_dir``), restored afterwards:
    pretrained weights are looked for, and would be downloaded, there."""
    import torch

    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        yield tmp_path / "hub"
    finally:
        torch.hub.set_dir(old)


class Server:
    """A real `ocellus serve` process on 127.0.0.1."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), *args]
        self._log_fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=self._log_fh,
                                     stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n"
                                   f"{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.terminate()  # a no-op once it has exited
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log_fh.close()


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory):
    """Factory: start a server with extra CLI args and env; all are stopped at the end.

    It returns once the server is ready, or at once with ``ready=False``.
    """
    servers: list[Server] = []
    cache = tmp_path_factory.mktemp("ocellus-cache")

    def start(*args: str, env: dict[str, str] | None = None, ready: bool = True) -> Server:
        log = tmp_path_factory.mktemp("server") / "server.log"
        server = Server(list(args), {"OCELLUS_CACHE_DIR": str(cache), **(env or {})}, log)
        servers.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for s in servers:  # signal them all first: they drain side by side
        s.proc.terminate()
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def start_replicas(start_server):
    """Factory: `n` servers with the same args and env, loading side by side; returns them
    once all are ready."""
    def start(n: int, *args: str, env: dict[str, str] | None = None) -> list[Server]:
        servers = [start_server(*args, env=env, ready=False) for _ in range(n)]
        for server in servers:
            server.wait_ready()
        return servers

    return start


@pytest.fixture(scope="session")
def fashion_mnist_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 train images per class (train split), 50 val per class (test split)."""
    if not FASHION_MNIST.is_dir():
        pytest.fail("Debian's dataset-fashion-mnist is missing: run `make system-deps`")
    from training.data.fashion_mnist import export_fashion_mnist

    out = tmp_path_factory.mktemp("fashion")
    export_fashion_mnist(out, per_class=100, val_per_class=50, seed=0)
    return out


@pytest.fixture(scope="session")
def fashion_model(tmp_path_factory: pytest.TempPathFactory,
                  fashion_mnist_tree: Path) -> tuple[Path, Manifest]:
    """efficientnet_lite0, feature extraction at 96 px, 3 epochs on 100 images per class."""
    from training.classify.train import get_args_parser, main

    out = tmp_path_factory.mktemp("fashion-model") / "export"
    args = get_args_parser().parse_args([
        "--data", str(fashion_mnist_tree), "--out", str(out), "--backbone",
        "efficientnet_lite0", "--mode", "feature-extract", "--epochs", "3", "--img-size", "96",
        "--batch-size", "50", "--lr", "3e-3", "--name", "fashion"])
    return out, main(args)


@pytest.fixture(scope="session")
def default_server(start_server) -> Iterator[Server]:
    """The service with no --model: the embedded default models."""
    return start_server()


@pytest.fixture(scope="session")
def detector_defaults_server(start_server, tmp_path_factory, nanodet_source_files) -> Server:
    """The service with no --model, NanoDet's files in its cache: both embedded defaults."""
    if not (DARKNET / "dog.jpg").is_file():
        pytest.fail("Debian's darknet package is missing: run `apt-get install darknet`")
    cache = tmp_path_factory.mktemp("nanodet-cache")
    npm_dir = nanodet_source_files[0].parents[2]  # the cache's npm/ folder
    (cache / "npm").symlink_to(npm_dir, target_is_directory=True)
    # Nothing here is about the backend or batch sizes, so neither is measured at start-up
    # (test_differential serves these models with each backend).
    return start_server(env={"OCELLUS_CACHE_DIR": str(cache), **QUICK_START})


@pytest.fixture(scope="session")
def synth_detect_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 synth-detect images (96 train / 24 val), longest side 256 px."""
    from training.data.synth_detect import synth_detect

    return synth_detect(tmp_path_factory.mktemp("synth-detect") / "data", images=120, seed=0,
                        img_size=256)


@pytest.fixture(scope="session")
def detector_export(tmp_path_factory: pytest.TempPathFactory,
                    synth_detect_yaml: Path) -> tuple[Path, Manifest]:
    """A detector export (efficientnet_lite0, 192 px, 8 epochs) from `ocellus train detect`."""
    from training.detection.train import get_args_parser, main

    out = tmp_path_factory.mktemp("detector") / "garments"
    args = get_args_parser().parse_args([
        "--data", str(synth_detect_yaml), "--out", str(out), "--epochs", "8",
        "--img-size", "192", "--batch-size", "8", "--no-progress"])
    return out, main(args)


@pytest.fixture(scope="session")
def detector_int8_export(tmp_path_factory: pytest.TempPathFactory,
                         detector_export: tuple[Path, Manifest]) -> Path:
    """`detector_export` quantized by `ocellus quantize` with its defaults: gated on its
    val mAP50-95 and per-class recall (training/quantize.py's `DEFAULT_MAX_DROP`)."""
    from cli.main import main as ocellus
    from training.quantize import EXIT_WRITTEN

    out = tmp_path_factory.mktemp("int8-garments") / "garments-int8"
    report = out.parent / "report.json"
    code = ocellus(["quantize", "--model", str(detector_export[0]), "--out", str(out),
                    "--report", str(report)])
    assert code == EXIT_WRITTEN, report.read_text() if report.exists() else code
    evaluation = json.loads(report.read_text())["evaluation"]
    print(f"\ngarments int8: val mAP50-95 {evaluation['fp32']['map50_95']:.4f} fp32 → "
          f"{evaluation['int8']['map50_95']:.4f} int8")
    return out


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny classifier exports ("tiny") with different weights."""
    root = tmp_path_factory.mktemp("tiny-exports")
    return [make_tiny_export(root / f"seed{s}", seed=s) for s in (0, 1)]


@pytest.fixture(scope="session")
def tiny_detector_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 3-class detector ("tinydet") at 64 px: quick to load."""
    out = tmp_path_factory.mktemp("tinydet") / "export"
    make_detector_export(out)
    return out
