"""Images per second of the default COCO detector, raw in-process and through the service.

Three measurements at each batch size (default 1 and 8), all on the same JPEG:

- ``forward``: `DetectionPredictor.forward` + ``postprocess`` on an already
  preprocessed batch (the model, decoding and NMS only), on a one-thread
  executor as in the service;
- ``pipeline``: JPEG decode + letterbox + forward + NMS in this process, i.e.
  everything the service does except HTTP;
- ``http``: ``POST /v1/detect`` with ``batch`` files per request to a real
  ``ocellus serve`` on 127.0.0.1, one request at a time.

Each loop is bounded by ``--seconds`` and ``--max-iters``; the three kinds take
turns over ``--rounds`` rounds and the table gives medians. The ratios say what
the service costs on top of the raw work. Run::

    .venv/bin/python benchmarks/nanodet.py [--batches 1 8] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import httpx
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.servers import free_port  # noqa: E402
from models.defaults import default_detector_export  # noqa: E402
from models.imaging import decode_image  # noqa: E402
from models.predictor import Predictor, load_predictor  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", type=Path, default=Path("/usr/share/darknet/data/dog.jpg"))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--seconds", type=float, default=5.0, help="time budget per loop")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--max-iters", type=int, default=200, help="iterations per loop at most")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads, here and in the server (0 = torch's default)")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "ocellus")
    p.add_argument("--model", type=Path, default=None,
                   help="detection export (default: the default detector in --cache-dir)")
    return p


def rate(fn: Callable[[], None], images_per_call: int, args: argparse.Namespace
         ) -> tuple[float, int]:
    """Images per second of `fn` over a bounded loop, and the number of calls timed."""
    for _ in range(args.warmup):
        fn()
    calls, start = 0, time.perf_counter()
    while calls < args.max_iters and (calls == 0 or time.perf_counter() - start < args.seconds):
        fn()
        calls += 1
    return calls * images_per_call / (time.perf_counter() - start), calls


def start_server(model: Path, threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "OCELLUS_TORCH_THREADS": str(threads), "OCELLUS_LOG_LEVEL": "warning"}
    cmd = [sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1", "--port",
           str(port), "--model", str(model)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise TimeoutError(f"server not ready:\n{log.read_text()[-2000:]}")


def _forward(predictor: Predictor, batch: torch.Tensor, metas: list) -> None:
    predictor.postprocess(predictor.forward(batch), metas)


def _pipeline(predictor: Predictor, data: bytes, b: int) -> None:
    predictor.predict([decode_image(data).tensor for _ in range(b)])


def _on(executor: ThreadPoolExecutor, fn: Callable[..., None], *args: object) -> None:
    executor.submit(fn, *args).result()


def _post(client: httpx.Client, files: list, b: int) -> None:
    r = client.post("/v1/detect", files=files)
    r.raise_for_status()
    assert len(r.json()["results"]) == b


def measure(model: Path, data: bytes, client: httpx.Client, args: argparse.Namespace
            ) -> dict[int, dict[str, list[tuple[float, int]]]]:
    """Per batch size and kind, one (img/s, calls) per round.

    The kinds take turns in every round, so a change in the machine's load (the
    cores are shared) hits all three alike instead of biasing one column.
    """
    predictor = load_predictor(model)
    image = decode_image(data).tensor
    executor = ThreadPoolExecutor(1, thread_name_prefix="raw")
    loops = {}
    for b in args.batches:
        inputs, metas = zip(*(predictor.preprocess(image) for _ in range(b)), strict=True)
        batch = torch.stack(inputs)  # (b, 3, 416, 416)
        files = [("file", (f"{i}.jpg", data, "image/jpeg")) for i in range(b)]
        # The service runs every forward on a one-thread executor; so does the raw path
        # here: under load, torch's intra-op pool on the main thread is far slower.
        loops[b] = {"forward": partial(_on, executor, _forward, predictor, batch, list(metas)),
                    "pipeline": partial(_on, executor, _pipeline, predictor, data, b),
                    "http": partial(_post, client, files, b)}
    rows: dict[int, dict[str, list[tuple[float, int]]]] = {
        b: {k: [] for k in loops[b]} for b in args.batches}
    for _ in range(args.rounds):
        for b in args.batches:
            for kind, fn in loops[b].items():
                rows[b][kind].append(rate(fn, b, args))
    return rows


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or default_detector_export(args.cache_dir)
    if model is None:
        print("no default detector: run `make setup` (or scripts/fetch-nanodet.sh)",
              file=sys.stderr)
        return 2
    data = args.image.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(model, args.threads, Path(tmp) / "server.log")
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                served = client.get("/v1/models").json()["models"]
                backend = next((m.get("backend", "?") for m in served), "?")
                rows = measure(model, data, client, args)
        finally:
            proc.terminate()
            proc.wait(30)

    print(f"default detector {model.name}, image {args.image.name}, torch threads "
          f"{args.threads or torch.get_num_threads()}, {os.cpu_count()} cores (shared); "
          f"raw = eager, service backend = {backend}; median of {args.rounds} interleaved "
          f"rounds of <= {args.seconds:g} s")
    print(f"{'batch':>5} | {'forward img/s':>13} | {'pipeline img/s':>14} | "
          f"{'http img/s':>10} | {'http/forward':>12} | {'http/pipeline':>13}")
    for b, r in rows.items():
        f, p, h = (statistics.median(x for x, _ in r[k]) for k in ("forward", "pipeline", "http"))
        print(f"{b:>5} | {f:>13.2f} | {p:>14.2f} | {h:>10.2f} | {h / f:>12.2f} | "
              f"{h / p:>13.2f}")
    for b, r in rows.items():
        print(f"b{b} per round (img/s): " + "; ".join(
            f"{k} " + " ".join(f"{x:.2f}" for x, _ in v) for k, v in r.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
