"""Serving under load, one command: raw model vs Ocellus vs LitServe vs TorchServe.

    .venv/bin/python benchmarks/serve_load.py [--export DIR] [--seconds 8]

1. Raw in-process throughput (decode + preprocess + model, best batch size) of
   the backend Ocellus picks (``auto``), plus model-only eager fp32 (NCHW),
   eager channels_last and the fast path, for the fast path ÷ eager ratio.
2. Ocellus through real HTTP on 127.0.0.1 at concurrency 1, 8 and 32 (closed
   loop, benchmarks/loadgen.py, whose own CPU per request is printed), then the
   same with batch-size tuning off (always batches of up to 8), side by side.
3. The same export served by LitServe and TorchServe (installed by
   benchmarks/rivals.py in venvs under ~/.cache/ocellus-bench), same load.
4. Peak RSS of each server (sum of VmHWM over its process tree).

The model is the default classifier export (EfficientNet-Lite0, ImageNet), a
640x480 JPEG per request. Timings share 2 cores with anything else running.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadgen import LoadResult, multipart_request, raw_request, run_load  # noqa: E402
from benchmarks.rivals import litserve_command, torchserve_command  # noqa: E402
from models.imaging import decode_image  # noqa: E402
from models.photos import real_images  # noqa: E402
from models.predictor import load_predictor  # noqa: E402
from service.backends import select_backend  # noqa: E402

HOST = "127.0.0.1"
LEVELS = (1, 8, 32)


def test_jpeg() -> bytes:
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).resize((640, 480)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _throughput(fn, batch: int, seconds: float) -> float:
    fn(batch)
    fn(batch)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(batch)
        n += batch
    return n / (time.perf_counter() - start)


def raw_throughput(export: Path, jpeg: bytes, seconds: float) -> dict:
    """Model-only img/s per path and batch, and decode+preprocess+model img/s."""
    predictor = load_predictor(export, precision="fp32")
    forward, report = select_backend(predictor, "auto", real_images(predictor.manifest),
                                     batch_size=8)
    size = predictor.input_size
    nchw = load_predictor(export)
    nchw.model = nchw.model.to(memory_format=torch.contiguous_format)
    paths = {"eager fp32 (NCHW)": lambda x: nchw.model(x),
             "eager channels_last": predictor.eager_forward, f"fast path ({report.name})": forward}
    model_only: dict[str, dict[int, float]] = {}
    with torch.inference_mode():
        for name, fn in paths.items():
            model_only[name] = {b: _throughput(lambda n, fn=fn: fn(torch.randn(n, 3, size, size)),
                                               b, seconds / 2) for b in (1, 8)}

        def end_to_end(n: int) -> None:
            inputs = [predictor.preprocess(decode_image(jpeg, target_size=size).tensor)[0]
                      for _ in range(n)]
            predictor.postprocess(forward(torch.stack(inputs)), [None] * n, top_k=5)

        e2e = {b: _throughput(end_to_end, b, seconds / 2) for b in (1, 4, 8, 16)}
        t = time.perf_counter()
        for _ in range(20):
            decode_image(jpeg, target_size=size)
        decode_ms = (time.perf_counter() - t) / 20 * 1000
    return {"backend": report, "model_only": model_only, "e2e": e2e, "decode_ms": decode_ms}


def _tree_pids(pid: int) -> list[int]:
    pids, frontier = [pid], [pid]
    while frontier:
        p = frontier.pop()
        kids = []
        # Each thread has its own children list (Java starts TorchServe's worker from one).
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids += (task / "children").read_text().split()
        pids += [int(k) for k in kids]
        frontier += [int(k) for k in kids]
    return pids


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory_mb(pid: int, field: str) -> float:
    """Sum of a /proc status field (VmHWM peak, VmRSS now) over a process tree, in MB."""
    return sum(_status_kb(p, field) for p in _tree_pids(pid)) / 1024


class Served:
    """A server process in its own process group, stopped with SIGTERM then SIGKILL."""

    def __init__(self, name: str, cmd: list[str], port: int, ready_url: str, log: Path,
                 env: dict | None = None) -> None:
        self.name, self.port, self.log = name, port, log
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._fh, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}: "
                                   f"{log.read_text()[-1500:]}")
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"{name} not ready in 300 s: {log.read_text()[-1500:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._fh.close()


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def load_levels(server: Served, request: bytes, seconds: float) -> dict:
    results: dict[int, LoadResult] = {}
    for c in LEVELS:
        results[c] = run_load(HOST, server.port, request, concurrency=c, seconds=seconds)
    return results


def run_ocellus(export: Path, jpeg: bytes, seconds: float, work: Path, *,
                env: dict | None = None, soak_seconds: float = 0.0) -> dict:
    port = _port()
    cmd = [sys.executable, "-m", "cli.main", "serve", "--host", HOST, "--port", str(port),
           "--model", str(export), "--log-level", "warning"]
    server = Served("ocellus", cmd, port, f"http://{HOST}:{port}/readyz",
                    work / f"ocellus-{len(list(work.glob('ocellus-*')))}.log", env)
    try:
        request = multipart_request("/v1/classify", f"{HOST}:{port}", "file", "c.jpg", jpeg)
        run_load(HOST, port, request, concurrency=8, seconds=2, warmup=0)  # warm-up
        rss_start = tree_memory_mb(server.proc.pid, "VmRSS")
        levels = load_levels(server, request, seconds)
        # A longer soak at concurrency 32 for the RSS-growth goal.
        soaked = run_load(HOST, port, request, concurrency=32, seconds=soak_seconds,
                          warmup=0).sent if soak_seconds else 0
        served = sum(r.sent for r in levels.values()) + soaked
        models = httpx.get(f"http://{HOST}:{port}/v1/models").json()["models"]
        metrics = httpx.get(f"http://{HOST}:{port}/metrics").text
        total = {k: sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                        if line.startswith(f"ocellus_batch_size_{k}"))
                 for k in ("sum", "count")}
        return {"mean_batch": total["sum"] / max(1.0, total["count"]),
                "levels": levels, "peak_mb": tree_memory_mb(server.proc.pid, "VmHWM"),
                "rss_growth_mb": tree_memory_mb(server.proc.pid, "VmRSS") - rss_start,
                "rss_requests": served, "backend": models[0].get("backend"),
                "batching": models[0].get("batching")}
    finally:
        server.stop()


def run_rival(name: str, export: Path, jpeg: bytes, seconds: float, work: Path) -> dict:
    port = _port()
    wd = work / name
    wd.mkdir()
    if name == "litserve":
        cmd, env = litserve_command(export, port, wd), {"PYTHONPATH": str(Path.cwd())}
        server = Served(name, cmd, port, f"http://{HOST}:{port}/health", wd / "server.log", env)
        request = multipart_request("/predict", f"{HOST}:{port}", "file", "c.jpg", jpeg)
    else:
        cmd, env = torchserve_command(export, port, wd)
        server = Served(name, cmd, port, f"http://{HOST}:{port}/ping", wd / "server.log", env)
        # /ping is healthy before the worker is up; wait for a real answer.
        request = raw_request("/predictions/ocellus", f"{HOST}:{port}", jpeg, "image/jpeg")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and httpx.post(
                f"http://{HOST}:{port}/predictions/ocellus", content=jpeg,
                timeout=60).status_code != 200:
            time.sleep(1)
    try:
        run_load(HOST, port, request, concurrency=8, seconds=2, warmup=0)
        levels = load_levels(server, request, seconds)
        return {"levels": levels, "peak_mb": tree_memory_mb(server.proc.pid, "VmHWM")}
    finally:
        server.stop()


def _row(name: str, res: dict) -> list[str]:
    out = [name]
    for c in LEVELS:
        r: LoadResult = res["levels"][c]
        out.append(f"{r.rps:7.1f} {1000 * r.percentile(0.5):6.1f} {1000 * r.percentile(0.99):7.1f}"
                   f" {r.errors:4d} {r.client_cpu_ms_per_request:5.2f}")
    out.append(f"{res['peak_mb']:7.0f}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--export", type=Path, default=None,
                   help="a classification export; default: the default classifier")
    p.add_argument("--seconds", type=float, default=8.0, help="per concurrency level")
    p.add_argument("--skip", nargs="*", default=[], choices=["litserve", "torchserve"])
    p.add_argument("--soak-seconds", type=float, default=0.0,
                   help="the RSS soak at concurrency 32 after the levels; default 3 x --seconds "
                        "(about 180 s make 10k requests here)")
    p.add_argument("--only-ocellus", action="store_true",
                   help="skip the raw, untuned and rival runs: the service alone (a soak)")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="intra-op threads for every contender (raw, Ocellus, LitServe, "
                        "TorchServe); 0 = torch's default (one per core). On a box shared "
                        "with other jobs 1 is far faster: a 2-thread OpenMP team waits at "
                        "every barrier for its descheduled half")
    args = p.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
        # Inherited by every server started below (LitServe and TorchServe workers too).
        os.environ["OMP_NUM_THREADS"] = os.environ["OCELLUS_TORCH_THREADS"] = str(
            args.torch_threads)
    logging.basicConfig(level=logging.WARNING)
    if args.export is None:
        from models.defaults import default_classifier_export

        args.export = default_classifier_export(Path.home() / ".cache" / "ocellus",
                                                "efficientnet_lite0")
    jpeg = test_jpeg()
    print(f"model: {args.export} | image: 640x480 JPEG ({len(jpeg)} bytes) | "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()} | "
          f"load average {os.getloadavg()[0]:.1f} at start", flush=True)
    if args.only_ocellus:
        with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
            oc = run_ocellus(args.export, jpeg, args.seconds, Path(tmp),
                             soak_seconds=args.soak_seconds or 3 * args.seconds)
        print(f"ocellus c=32 {oc['levels'][32].rps:.1f} req/s; RSS growth "
              f"{oc['rss_growth_mb']:+.1f} MB over {oc['rss_requests']} requests after "
              f"warm-up; peak {oc['peak_mb']:.0f} MB")
        return 0
    raw = raw_throughput(args.export, jpeg, args.seconds)
    print(f"\n(1) raw in-process, backend chosen: {raw['backend'].name} "
          f"({raw['backend'].reason})")
    for name, by_batch in raw["model_only"].items():
        print(f"  model only  {name:28s} " + "  ".join(f"b{b}: {v:6.1f} img/s"
                                                      for b, v in by_batch.items()))
    print("  decode+preprocess+model (fast path): " + "  ".join(
        f"b{b}: {v:6.1f}" for b, v in raw["e2e"].items()) + f" img/s; decode "
          f"{raw['decode_ms']:.2f} ms/img", flush=True)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        work = Path(tmp)
        results["ocellus"] = run_ocellus(args.export, jpeg, args.seconds, work,
                                         soak_seconds=args.soak_seconds or 3 * args.seconds)
        # The same service with batch-size tuning off: it always fills batches of 8.
        if not args.only_ocellus:
            results["ocellus b8"] = run_ocellus(args.export, jpeg, args.seconds, work,
                                                env={"OCELLUS_TUNE_BATCH_SIZE": "false"})
        for rival in ("litserve", "torchserve"):
            if rival in args.skip:
                continue
            try:
                results[rival] = run_rival(rival, args.export, jpeg, args.seconds, work)
            except Exception as exc:  # noqa: BLE001 - report why and go on
                print(f"\n{rival} could not be run: {type(exc).__name__}: {exc}", flush=True)
    print("\n(2)-(4) HTTP, closed loop; per level: req/s  p50 ms  p99 ms  errors  "
          "loadgen CPU ms/req; then peak RSS MB")
    print(f"{'server':11s}" + "".join(f"| c={c:<36d}" for c in LEVELS) + "| peak RSS")
    for name, res in results.items():
        cells = _row(name, res)
        print(f"{cells[0]:11s}" + "".join(f"| {c:37s}" for c in cells[1:-1]) + f"| {cells[-1]}")
    oc = results["ocellus"]
    best_raw = max(raw["e2e"].values())
    rps32 = oc["levels"][32].rps
    print(f"\nOcellus backend: {oc['backend']}; batch size {oc['batching']['reason']} "
          f"(measured img/s {oc['batching']['images_per_second']}); mean batch "
          f"{oc['mean_batch']:.2f} images; RSS growth {oc['rss_growth_mb']:+.1f} MB over "
          f"{oc['rss_requests']} requests after warm-up")
    untuned = results.get("ocellus b8")
    if untuned:
        print(f"batch-size tuning: c=32 {rps32:.1f} req/s tuned vs {untuned['levels'][32].rps:.1f} "
              f"always batch 8 (mean batch {untuned['mean_batch']:.2f}): "
              f"{rps32 / untuned['levels'][32].rps:.2f}x")
    print(f"service ÷ raw (c=32 vs best raw e2e {best_raw:.1f}): {rps32 / best_raw:.2f}")
    for rival in ("litserve", "torchserve"):
        if rival in results:
            print(f"Ocellus ÷ {rival} at c=32: {rps32 / results[rival]['levels'][32].rps:.2f}")
    mo = raw["model_only"]
    fast = next(k for k in mo if k.startswith("fast path"))
    for b in (1, 8):
        print(f"fast path ÷ eager fp32 (NCHW), model only, batch {b}: "
              f"{mo[fast][b] / mo['eager fp32 (NCHW)'][b]:.2f}; ÷ eager channels_last: "
              f"{mo[fast][b] / mo['eager channels_last'][b]:.2f}")
    b1 = 1000 / mo[fast][1]
    print(f"p99 at c=1: {1000 * oc['levels'][1].percentile(0.99):.1f} ms vs 1.2 × (batch-1 "
          f"model {b1:.1f} ms + decode {raw['decode_ms']:.1f} ms) = "
          f"{1.2 * (b1 + raw['decode_ms']):.1f} ms")
    print(f"fast path agreement with eager fp32 on real images: "
          f"{raw['backend'].agreement} ({raw['backend'].sample_images} images)")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
