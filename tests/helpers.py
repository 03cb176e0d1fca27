"""Helpers that test modules import (``from helpers import ...``; pytest's ``pythonpath``
puts tests/ on the path). Fixtures live in conftest.py."""

from __future__ import annotations

import io
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from models.classification.classifier import ImageClassifier
    from models.detection.detector import Detector

# Server settings for tests that are not about the backend or batch sizes: eager, no
# measuring at start-up (which takes seconds per model).
QUICK_START = {"OCELLUS_BACKEND": "eager", "OCELLUS_TUNE_BATCH_SIZE": "false"}


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: int = 48) -> bytes:
    """A small solid-colour PNG with a little noise."""
    rng = np.random.default_rng(0)
    pixels = np.clip(np.array(color) + rng.integers(-20, 20, (size, size, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


TINY_LABELS = ["red", "green", "blue"]
REPO = Path(__file__).resolve().parent.parent


def make_tiny_export(out: Path, *, seed: int = 0, name: str = "tiny") -> Path:
    """An untrained efficientnet_lite0 classifier of 3 classes at 64 px: quick to load."""
    make_classifier_export(out, seed=seed, name=name)
    return out


def make_classifier_export(out: Path, backbone: str = "efficientnet_lite0", *,
                           labels: list[str] = TINY_LABELS, size: int = 64, seed: int = 0,
                           name: str = "tiny") -> ImageClassifier:
    """An untrained classifier export on `backbone` at `size` px; returns the model (eval)."""
    import torch

    from models.classification.classifier import ImageClassifier
    from models.export import Manifest, save_export

    torch.manual_seed(seed)
    model = ImageClassifier(backbone, len(labels), backbone_weights=None).eval()
    pre = model.backbone.preprocessing.with_size(size)
    manifest = Manifest(
        task="classify", name=name, labels=list(labels), preprocessing=pre.to_dict(),
        architecture={"name": "classifier", "args": {
            "backbone": backbone, "num_classes": len(labels), "dropout": 0.2}})
    save_export(model, out, manifest)
    return model


def make_detector_export(out: Path, backbone: str = "efficientnet_lite0", *,
                         labels: list[str] = TINY_LABELS, size: int = 64, width: int = 16,
                         seed: int = 0, name: str = "tinydet") -> Detector:
    """An untrained detector export on `backbone` at `size` px; returns the model (eval)."""
    import torch

    from models.detection.detector import Detector
    from models.export import Manifest, save_export

    torch.manual_seed(seed)
    model = Detector(backbone, len(labels), width=width, img_size=size,
                     backbone_weights=None).eval()
    manifest = Manifest(task="detect", name=name, labels=list(labels),
                        preprocessing=model.preprocessing.to_dict(),
                        architecture={"name": "detector", "args": model.model_args})
    save_export(model, out, manifest)
    return model


def promql_metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads: the service's own (``ocellus_...``) and
    recorded ones (``level:metric:operations``, from deploy/prometheus/alerts.yml).

    Quoted strings (label values such as route templates) are left out.
    """
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'", '""', expr)
    return {name for name in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", unquoted)
            if name.startswith("ocellus_") or ":" in name}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def prometheus_server(targets: list[str], folder: Path) -> Iterator[str]:
    """Debian's Prometheus on 127.0.0.1: the repo's config and rules, with the DNS
    targets swapped for `targets` ("host:port"), scraped and evaluated every second.

    Yields its URL once it is ready; it is stopped on exit. Its files go in `folder`.
    """
    import yaml

    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).exists():
        raise RuntimeError("Debian's prometheus is missing: run `make system-deps`")
    config = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    job.pop("dns_sd_configs")
    job["static_configs"] = [{"targets": targets}]
    job["scrape_interval"] = config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    # The rule files, beside the config as in the repo, with every group on the 1 s
    # interval (not a group's own, which could delay its first evaluation by a minute).
    for name in config["rule_files"]:
        rules = yaml.safe_load((REPO / "deploy/prometheus" / name).read_text())
        for group in rules["groups"]:
            group.pop("interval", None)
        (folder / name).write_text(yaml.safe_dump(rules))
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    log = folder / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address={url.removeprefix('http://')}"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def prometheus_query(url: str, promql: str) -> list[dict]:
    """An instant query's result: one ``{"metric": {...}, "value": [t, "v"]}`` per series."""
    r = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "success", r.text
    return r.json()["data"]["result"]


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1: every span it was sent, decoded with
    the official ``opentelemetry-proto`` messages. ``close()`` stops it."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.spans: list = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                with receiver.lock:
                    receiver.spans += [s for rs in request.resource_spans
                                       for ss in rs.scope_spans for s in ss.spans]
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of_trace(self, trace_id: bytes) -> list:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
