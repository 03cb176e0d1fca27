"""Serving under load, one command: raw model vs Ocellus vs LitServe vs TorchServe.

    .venv/bin/python benchmarks/serve_load.py [--export DIR] [--seconds 8]

1. Raw in-process throughput: model only (eager fp32 NCHW, eager channels_last,
   and the fast path Ocellus picks with ``auto``), and decode + preprocess +
   model at batch 1, 4, 8 and 16 for each of them.
2. The hardware's peaks on this box (torch fp32 and bf16 matmul, int8 matmul,
   OpenVINO fp32 and int8 convolutions), and each path's achieved GOP/s.
3. Ocellus through real HTTP on 127.0.0.1 at concurrency 1, 8 and 32 (closed
   loop, benchmarks/loadgen.py, whose own CPU per request is printed), serving
   the export as the service does by default, then a soak at concurrency 32 up
   to 10k requests for RSS growth, counted from the end of a warm-up (`warm_up`,
   every server alike); then Ocellus serving the fp32 export.
4. The fp32 export served by LitServe and TorchServe (installed by
   benchmarks/rivals.py in venvs under ~/.cache/ocellus-bench), same load.
5. Peak RSS of each server (sum of VmHWM over its process tree), and the
   issue's goals as ratios measured in this run.

The model is the default classifier (EfficientNet-Lite0, ImageNet): its int8
variant as served by default (`ocellus defaults`), beside its fp32 export; or
``--export`` (a detector too, with ``--fp32-export`` beside it; no rivals). A
640x480 JPEG per request (for a detector, darknet's dog.jpg). Timings share 2
cores with anything else running.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadgen import LoadResult, multipart_request, raw_request, run_load  # noqa: E402
from benchmarks.peaks import gflop_per_image, hardware_peaks  # noqa: E402
from benchmarks.rivals import litserve_command, torchserve_command  # noqa: E402
from benchmarks.servers import HOST, Served, free_port, tree_memory_mb  # noqa: E402
from benchmarks.soak import rss_growth, soak  # noqa: E402
from models.export import read_manifest  # noqa: E402
from models.imaging import decode_image  # noqa: E402
from models.photos import real_images  # noqa: E402
from models.predictor import load_predictor  # noqa: E402
from models.tasks import get_task  # noqa: E402
from service.backends import select_backend  # noqa: E402

LEVELS = (1, 8, 32)
SOAK_CONCURRENCY = LEVELS[-1]  # the soak for RSS growth, and the end of the warm-up
WARM_UP_REQUESTS = 1000  # at SOAK_CONCURRENCY, whatever the model's speed


def test_jpeg(task: str = "classify") -> bytes:
    """A 640x480 photo of a cat (classify), or darknet's dog.jpg, 768x576 (detect)."""
    if task == "detect":
        return Path("/usr/share/darknet/data/dog.jpg").read_bytes()
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).resize((640, 480)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _options(task: str) -> dict:
    """The postprocess options of every request: the routes' defaults."""
    return {"top_k": 5} if task == "classify" else {"conf": 0.25, "iou": 0.45}


def _throughput(fn, batch: int, seconds: float) -> float:
    fn(batch)
    fn(batch)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(batch)
        n += batch
    return n / (time.perf_counter() - start)


EAGER_NCHW, EAGER_CL = "eager fp32 (NCHW)", "eager fp32 channels_last"


def raw_throughput(export: Path, jpeg: bytes, seconds: float) -> dict:
    """Per path (eager NCHW, eager channels_last, the fast path): model-only img/s at batch
    1 and 8, and decode + preprocess + model img/s at batch 1, 4, 8 and 16."""
    predictor = load_predictor(export, precision="fp32")
    forward, report = select_backend(predictor, "auto", real_images(predictor.manifest),
                                     batch_size=8)
    size, decode_size = predictor.input_size, predictor.preprocessing.decode_size
    nchw = load_predictor(export, precision="fp32")
    nchw.model = nchw.model.to(memory_format=torch.contiguous_format)
    fast = f"fast path ({report.name})"
    paths = {EAGER_NCHW: lambda x: nchw.model(x), EAGER_CL: predictor.eager_forward,
             fast: forward}
    model_only: dict[str, dict[int, float]] = {}
    e2e: dict[str, dict[int, float]] = {}
    threads = torch.get_num_threads()
    with torch.inference_mode():
        for name, fn in paths.items():
            if name == fast and report.name == "int8":
                # As the service runs it (service/model_store.py): OpenVINO has its own
                # threads, torch's work around it one.
                torch.set_num_threads(1)
            # The inputs made beforehand: on one thread torch.randn takes about a fifth
            # of the int8 forward's time (0.5 of 3 ms at batch 1), which counted as the
            # model's.
            model_only[name] = {b: _throughput(lambda n, fn=fn, x=torch.randn(b, 3, size, size):
                                               fn(x), b, seconds / 4) for b in (1, 8)}

            def end_to_end(n: int, fn=fn) -> None:
                inputs, metas = zip(*(predictor.preprocess(decode_image(
                    jpeg, target_size=decode_size).tensor) for _ in range(n)), strict=True)
                predictor.postprocess(fn(torch.stack(inputs)), list(metas),
                                      **_options(predictor.task))

            e2e[name] = {b: _throughput(end_to_end, b, seconds / 4) for b in (1, 4, 8, 16)}
        torch.set_num_threads(threads)
        t = time.perf_counter()
        for _ in range(20):
            decode_image(jpeg, target_size=decode_size)
        decode_ms = (time.perf_counter() - t) / 20 * 1000
    return {"backend": report, "fast": fast, "model_only": model_only, "e2e": e2e,
            "decode_ms": decode_ms, "gflop": gflop_per_image(predictor)}


def warm_up(port: int, request: bytes) -> None:
    """2 s at concurrency 8 (the first forwards, batch-size tuning's leftovers), then
    `WARM_UP_REQUESTS` at `SOAK_CONCURRENCY` (60 s at most): the memory that that many
    requests in flight hold (uploads, decoded frames, batches) is then in the RSS that
    growth is counted from, so the growth counts only what the requests leave behind."""
    run_load(HOST, port, request, concurrency=8, seconds=2, warmup=0)
    sent, deadline = 0, time.monotonic() + 60
    while sent < WARM_UP_REQUESTS and time.monotonic() < deadline:
        sent += run_load(HOST, port, request, concurrency=SOAK_CONCURRENCY, seconds=1,
                         warmup=0).sent


def load_levels(server: Served, request: bytes, seconds: float) -> dict:
    results: dict[int, LoadResult] = {}
    for c in LEVELS:
        results[c] = run_load(HOST, server.port, request, concurrency=c, seconds=seconds)
    return results


def run_ocellus(export: Path, jpeg: bytes, seconds: float, work: Path, *,
                env: dict | None = None, soak_requests: int = 0) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "cli.main", "serve", "--host", HOST, "--port", str(port),
           "--model", str(export), "--log-level", "warning"]
    server = Served("ocellus", cmd, port, f"http://{HOST}:{port}/readyz",
                    work / f"ocellus-{len(list(work.glob('ocellus-*')))}.log", env)
    try:
        route = get_task(read_manifest(export).task).route
        request = multipart_request(route, f"{HOST}:{port}", "file", "c.jpg", jpeg)
        warm_up(port, request)
        rss_start = tree_memory_mb(server.proc.pid, "VmRSS")
        levels = load_levels(server, request, seconds)
        # A soak up to `soak_requests` in all, for the RSS goal (benchmarks/soak.py).
        samples = soak(server, request, concurrency=SOAK_CONCURRENCY,
                       served=sum(r.sent for r in levels.values()), until=soak_requests,
                       rps=levels[SOAK_CONCURRENCY].rps, rss_start=rss_start)
        models = httpx.get(f"http://{HOST}:{port}/v1/models").json()["models"]
        metrics = httpx.get(f"http://{HOST}:{port}/metrics").text
        total = {k: sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                        if line.startswith(f"ocellus_batch_size_{k}"))
                 for k in ("sum", "count")}
        return {"mean_batch": total["sum"] / max(1.0, total["count"]),
                "levels": levels, "peak_mb": tree_memory_mb(server.proc.pid, "VmHWM"),
                "rss_requests": samples[-1][0], "rss_samples": samples,
                "backend": models[0].get("backend"),
                "batching": models[0].get("batching")}
    finally:
        server.stop()


def run_rival(name: str, export: Path, jpeg: bytes, seconds: float, work: Path) -> dict:
    port = free_port()
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
    try:
        deadline = time.monotonic() + 300
        while name == "torchserve":
            if time.monotonic() > deadline:
                raise TimeoutError(f"TorchServe answered no prediction in 300 s: see "
                                   f"{wd / 'server.log'}")
            try:  # the first answer waits for the worker to load (over 60 s when busy)
                if httpx.post(f"http://{HOST}:{port}/predictions/ocellus", content=jpeg,
                              timeout=60).status_code == 200:
                    break
            except httpx.TimeoutException:
                continue
            time.sleep(1)
        warm_up(port, request)
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


def _default_exports() -> tuple[Path, Path]:
    """(as served by default, fp32): the default classifier's int8 variant where
    `ocellus defaults` made one, and its fp32 export."""
    from models.defaults import default_classifier_export, served_variant

    fp32 = default_classifier_export(Path.home() / ".cache" / "ocellus", "efficientnet_lite0")
    return served_variant(fp32), fp32


def _goal(name: str, value: float, goal: str, met: bool) -> None:
    print(f"  {name:62s} {value:7.2f}   goal {goal:7s} {'met' if met else 'NOT MET'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--export", type=Path, default=None,
                   help="an export to serve (classify or detect); default: the default "
                        "classifier as served (its int8 variant), beside its fp32 export")
    p.add_argument("--fp32-export", type=Path, default=None,
                   help="with --export: an fp32 export to serve beside it (the rivals serve "
                        "it too)")
    p.add_argument("--seconds", type=float, default=8.0, help="per concurrency level")
    p.add_argument("--skip", nargs="*", default=[], choices=["litserve", "torchserve"])
    p.add_argument("--soak-requests", type=int, default=10_000,
                   help="requests served in all (levels, then a soak at concurrency 32, "
                        "RSS read every ~5 s), for the RSS goal; at most 300 s of soak")
    p.add_argument("--only-ocellus", action="store_true",
                   help="skip the raw, fp32 and rival runs: the service alone (a soak)")
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
    served, fp32 = ((args.export, args.fp32_export or args.export) if args.export
                    else _default_exports())
    task = read_manifest(served).task
    if task != "classify":  # LitServe's and TorchServe's handlers here classify
        args.skip = ["litserve", "torchserve"]
    jpeg = test_jpeg(task)
    print(f"model: {served} (fp32: {fp32}) | image: {task} JPEG ({len(jpeg)} bytes) | "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()} | "
          f"load average {os.getloadavg()[0]:.1f} at start", flush=True)
    if args.only_ocellus:
        with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
            oc = run_ocellus(served, jpeg, args.seconds, Path(tmp),
                             soak_requests=args.soak_requests)
        rise, line = rss_growth(oc["rss_samples"])
        floor = "too few readings" if rise is None else f"{rise:+.1f} MB per 10k requests"
        print(f"ocellus c=32 {oc['levels'][32].rps:.1f} req/s; RSS over {oc['rss_requests']} "
              f"requests after warm-up: floor's rise {floor}, {line}; peak {oc['peak_mb']:.0f} MB")
        return 0
    raw = raw_throughput(served, jpeg, args.seconds)
    fast = raw["fast"]
    print(f"\n(1) raw in-process, backend chosen: {raw['backend'].name} "
          f"({raw['backend'].reason}); {raw['gflop']:.3f} GFLOP per image")
    for name, by_batch in raw["model_only"].items():
        print(f"  model only                   {name:26s} " + "  ".join(
            f"b{b}: {v:6.1f}" for b, v in by_batch.items()) + " img/s")
    for name, by_batch in raw["e2e"].items():
        print(f"  decode+preprocess+model      {name:26s} " + "  ".join(
            f"b{b}: {v:6.1f}" for b, v in by_batch.items()) + " img/s")
    print(f"  decode {raw['decode_ms']:.2f} ms/img", flush=True)
    peaks = hardware_peaks()
    print("\n(2) peaks of this box (GOP/s): " + "; ".join(f"{k} {v:.0f}"
                                                        for k, v in peaks.items()))
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        work = Path(tmp)
        results["ocellus"] = run_ocellus(served, jpeg, args.seconds, work,
                                         soak_requests=args.soak_requests)
        if fp32 != served:
            results["ocellus fp32"] = run_ocellus(fp32, jpeg, args.seconds, work)
        for rival in ("litserve", "torchserve"):
            if rival in args.skip:
                continue
            try:
                results[rival] = run_rival(rival, fp32, jpeg, args.seconds, work)
            except Exception as exc:  # noqa: BLE001 - report why and go on
                print(f"\n{rival} could not be run: {type(exc).__name__}: {exc}", flush=True)
    print("\n(3)-(5) HTTP, closed loop; per level: req/s  p50 ms  p99 ms  errors  "
          "loadgen CPU ms/req; then peak RSS MB")
    print(f"{'server':13s}" + "".join(f"| c={c:<36d}" for c in LEVELS) + "| peak RSS")
    for name, res in results.items():
        cells = _row(name, res)
        print(f"{cells[0]:13s}" + "".join(f"| {c:37s}" for c in cells[1:-1]) + f"| {cells[-1]}")
    oc = results["ocellus"]
    rps32 = oc["levels"][32].rps
    print(f"\nOcellus backend: {oc['backend']}; batch size {oc['batching']['reason']}; "
          f"mean batch {oc['mean_batch']:.2f} images")
    for name in (k for k in results if k.startswith("ocellus ")):
        print(f"{name}: backend {results[name]['backend']}, c=32 "
              f"{results[name]['levels'][32].rps:.1f} req/s")

    mo, e2e = raw["model_only"], raw["e2e"]
    best_eager = max((v, f"{name} b{b}") for name in (EAGER_NCHW, EAGER_CL)
                     for b, v in e2e[name].items())
    best_raw = max(e2e[fast].values())
    b1_ms = 1000 / mo[fast][1]
    p99_bound = 1.2 * (b1_ms + raw["decode_ms"])
    p99 = 1000 * oc["levels"][1].percentile(0.99)
    print(f"\nGoals, measured in this run (c=32 unless said; the best eager fp32 pipeline "
          f"is {best_eager[1]} at {best_eager[0]:.1f} img/s):")
    least = 2.0 if task == "detect" else 2.5  # the goal per task
    _goal("service ÷ best eager fp32 pipeline (decode+preprocess+model)",
          rps32 / best_eager[0], f">= {least}", rps32 / best_eager[0] >= least)
    _goal(f"service ÷ raw with the same backend ({fast}, best batch "
          f"{best_raw:.1f} img/s)", rps32 / best_raw, ">= 0.9", rps32 / best_raw >= 0.9)
    _goal(f"p99 at c=1 {p99:.1f} ms ÷ 1.2 × (b1 model {b1_ms:.1f} + decode "
          f"{raw['decode_ms']:.1f} ms)", p99 / p99_bound, "<= 1", p99 <= p99_bound)
    # The bound leaves out preprocessing and postprocessing: the in-process pipeline
    # alone, with no HTTP and no threads, shows how much of the bound it already takes.
    e2e_b1_ms = 1000 / e2e[fast][1]
    label = f"  (the raw pipeline at batch 1, mean {e2e_b1_ms:.1f} ms) ÷ the same bound"
    print(f"  {label:62s} {e2e_b1_ms / p99_bound:7.2f}")
    for rival in ("litserve", "torchserve"):
        if rival in results:
            ratio = rps32 / results[rival]["levels"][32].rps
            _goal(f"Ocellus ÷ {rival}", ratio, ">= 1.5", ratio >= 1.5)
            if "ocellus fp32" in results:
                fair = results["ocellus fp32"]["levels"][32].rps / results[rival]["levels"][32].rps
                print(f"  {'  (Ocellus serving the fp32 export) ÷ ' + rival:62s} {fair:7.2f}")
    rise, line = rss_growth(oc["rss_samples"])
    if rise is not None and oc["rss_requests"] >= 10_000:
        _goal(f"RSS floor's rise, MB per 10k requests, over {oc['rss_requests']} served",
              rise, "flat", abs(rise) <= 50)
        print(f"    ({line})")
    else:
        print(f"  RSS over {oc['rss_requests']} requests: too few readings or requests for the "
              f"goal (--soak-requests {args.soak_requests}); {line}")
    int8_peak = peaks["int8 3x3 conv (OpenVINO)"]
    fp32_peak = max(peaks["fp32 matmul (torch)"], peaks["fp32 3x3 conv (OpenVINO)"])
    print(f"  achieved GOP/s ÷ peak ({raw['gflop']:.3f} GFLOP per image; int8 peak "
          f"{int8_peak:.0f}, fp32 peak {fp32_peak:.0f}):")
    peak_of = {fast: int8_peak if raw["backend"].name == "int8" else fp32_peak,
               EAGER_NCHW: fp32_peak, EAGER_CL: fp32_peak}
    for name, by_batch in mo.items():
        gops = raw["gflop"] * by_batch[8]
        print(f"    model only b8, {name:30s} {gops:6.0f} GOP/s = {gops / peak_of[name]:5.1%}")
    gops = raw["gflop"] * rps32
    print(f"    the service at c=32 ({fast:22s}) {gops:6.0f} GOP/s = {gops / peak_of[fast]:5.1%}")
    print(f"fast path agreement with eager fp32 on real images: "
          f"{raw['backend'].agreement} ({raw['backend'].sample_images} images)")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
