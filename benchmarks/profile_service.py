"""Where a served request's time goes: stage timings and a py-spy profile, per thread.

    .venv/bin/python benchmarks/profile_service.py [--export DIR] [--concurrency 1 32]
        [--seconds 8] [--gil]

For each concurrency it starts ``ocellus serve`` on 127.0.0.1 (batch-size tuning
off), runs a closed loop (benchmarks/loadgen.py) and meanwhile records the
server with py-spy (``pip install py-spy``) for the same seconds. It prints:

- req/s, p50 and p99, and the mean time per image or batch of each stage the
  service measures (decode, preprocess, queue, forward, postprocess, whole HTTP
  request), read from its /metrics before and after;
- per thread, its share of the samples and its top functions. With ``--idle``
  (the default) a thread is sampled whether it runs or waits, so a thread's
  shares say where its wall time goes; with ``--gil`` only the thread holding
  the GIL is sampled, which shows who keeps the others from running Python.

On the main thread, ``Runner.run`` as the innermost frame is time spent in the
event loop's C code (uvloop): waiting for sockets, reading and writing them.
py-spy's sampling slows the server: at 100 Hz with ``--idle``, concurrency 32
went from about 240 to 186 req/s here, so read the shares, not the rates.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadgen import multipart_request, run_load  # noqa: E402
from benchmarks.serve_load import test_jpeg  # noqa: E402
from benchmarks.servers import HOST, Served, free_port  # noqa: E402
from models.export import read_manifest  # noqa: E402
from models.tasks import get_task  # noqa: E402

STAGES = ("decode", "preprocess", "queue", "forward", "postprocess")
# The venv's py-spy (the `dev` extra), else one on PATH.
PY_SPY = str(next((p for p in (Path(sys.executable).parent / "py-spy",) if p.is_file()),
                  "py-spy"))


def stage_totals(url: str, route: str) -> dict[tuple[str, str], float]:
    """(stage, sum|count) → value, from the service's histograms."""
    out: dict[tuple[str, str], float] = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if m := re.match(r'ocellus_inference_duration_seconds_(sum|count)\{model="[^"]+",'
                         r'stage="(\w+)"\} (\S+)', line):
            out[(m[2], m[1])] = out.get((m[2], m[1]), 0.0) + float(m[3])
        elif m := re.match(rf'ocellus_http_request_duration_seconds_(sum|count)\{{route="'
                           rf'{re.escape(route)}"\}} (\S+)', line):
            out[("http", m[1])] = float(m[2])
    return out


def per_thread(raw: Path, top: int) -> list[tuple[str, int, list[tuple[float, str]]]]:
    """(thread, samples, [(share, innermost function)]) from py-spy's raw output."""
    samples: collections.Counter[str] = collections.Counter()
    leaves: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = re.sub(r"\s*\(\d+\)|0x[0-9a-f]+", "", frames[0]).strip()
        leaf = re.sub(r" \(/.*/(site-packages|python3\.\d+|main)/", " (", frames[-1])
        samples[thread] += int(count)
        leaves[thread][leaf] += int(count)
    return [(t, n, [(c / n, leaf) for leaf, c in leaves[t].most_common(top)])
            for t, n in samples.most_common()]


def profile(export: Path, concurrency: int, seconds: float, mode: str, work: Path,
            top: int) -> None:
    route = get_task(read_manifest(export).task).route
    port = free_port()
    cmd = [sys.executable, "-m", "cli.main", "serve", "--host", HOST, "--port", str(port),
           "--model", str(export), "--log-level", "warning"]
    server = Served("ocellus", cmd, port, f"http://{HOST}:{port}/readyz",
                    work / f"server-{concurrency}.log", {"OCELLUS_TUNE_BATCH_SIZE": "false"})
    url = f"http://{HOST}:{port}"
    try:
        request = multipart_request(route, f"{HOST}:{port}", "file", "x.jpg",
                                    test_jpeg(read_manifest(export).task))
        run_load(HOST, port, request, concurrency=concurrency, seconds=2, warmup=0)  # warm-up
        raw = work / f"py-spy-{concurrency}.txt"
        spy = subprocess.Popen([PY_SPY, "record", "-p", str(server.proc.pid), "-d",
                                str(int(seconds)), "-r", "100", "--threads", mode, "-f", "raw",
                                "-o", str(raw)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
        before = stage_totals(url, route)
        result = run_load(HOST, port, request, concurrency=concurrency, seconds=seconds,
                          warmup=0)
        after = stage_totals(url, route)
        _, err = spy.communicate(timeout=seconds + 60)
    finally:
        server.stop()
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    ms = {s: 1000 * d[(s, "sum")] / d[(s, "count")] for s in (*STAGES, "http")
          if d.get((s, "count"))}
    print(f"\nconcurrency {concurrency}: {result.rps:.1f} req/s, p50 "
          f"{1000 * result.percentile(0.5):.1f} ms, p99 {1000 * result.percentile(0.99):.1f} ms; "
          "mean ms per image (decode, preprocess) or batch (queue, forward, postprocess): "
          + ", ".join(f"{k} {v:.2f}" for k, v in ms.items()))
    if not raw.is_file():
        print(f"  no profile: py-spy said {err.decode(errors='replace').strip()[-300:]}")
        return
    print(f"  py-spy {mode}: samples per thread, then its top innermost functions")
    for thread, n, leaves in per_thread(raw, top):
        print(f"  {thread}: {n}")
        for share, leaf in leaves:
            print(f"    {share:6.1%} {leaf[:110]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--export", type=Path, default=None,
                   help="default: the default classifier as served (its int8 variant)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--gil", action="store_true", help="sample the GIL holder only")
    p.add_argument("--top", type=int, default=8, help="functions shown per thread")
    args = p.parse_args(argv)
    if args.export is None:
        from benchmarks.serve_load import _default_exports

        args.export = _default_exports()[0]
    with tempfile.TemporaryDirectory(prefix="profile-service-") as tmp:
        for c in args.concurrency:
            profile(args.export, c, args.seconds, "--gil" if args.gil else "--idle",
                    Path(tmp), args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
