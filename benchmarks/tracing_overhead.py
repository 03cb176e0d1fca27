"""What OpenTelemetry tracing costs the service, side by side in one run.

The default classifier (its fp32 export, eager, so the backend choice does not
vary) is served three times on 127.0.0.1: tracing off, on with the sampler at
ratio 1.0 (every request traced, exported over OTLP/HTTP to a receiver in this
process that decodes nothing and answers 200), and on at ratio 0.1. Each gets
the same closed-loop load at concurrency 1 and 8; the runs take turns
`--rounds` times so drift on the box hits them alike. It prints req/s and p50/p99
per setting and the ratios to tracing off.

    .venv/bin/python benchmarks/tracing_overhead.py [--seconds 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from loadgen import multipart_request, run_load
from servers import HOST, Served, free_port

SETTINGS = {
    "off": {},
    "on, ratio 1.0": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                      "OTEL_TRACES_SAMPLER_ARG": "1.0"},
    "on, ratio 0.1": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                      "OTEL_TRACES_SAMPLER_ARG": "0.1"},
}
LEVELS = (1, 8)


def sink() -> tuple[ThreadingHTTPServer, int]:
    """An OTLP/HTTP endpoint that takes every export and counts its bytes."""
    class Handler(BaseHTTPRequestHandler):
        received = 0

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            Handler.received += len(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer((HOST, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, port


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    from PIL import Image
    from skimage import data

    from models.defaults import default_classifier_export

    export = default_classifier_export(Path.home() / ".cache" / "ocellus")
    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buf, "JPEG", quality=90)
    otlp, otlp_port = sink()
    results: dict[str, dict[int, list]] = {name: {c: [] for c in LEVELS} for name in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="tracing-overhead-") as tmp:
        for round_ in range(args.rounds):
            for name, env in SETTINGS.items():
                port = free_port()
                cmd = [sys.executable, "-m", "cli.main", "serve", "--host", HOST, "--port",
                       str(port), "--model", str(export), "--log-level", "warning"]
                tracing = {} if name == "off" else {
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{otlp_port}", **env}
                env = {"OCELLUS_BACKEND": "eager", "OCELLUS_TUNE_BATCH_SIZE": "false",
                       **tracing}
                server = Served(name, cmd, port, f"http://{HOST}:{port}/readyz",
                                Path(tmp) / f"{round_}-{len(results[name][1])}.log", env)
                try:
                    request = multipart_request("/v1/classify", f"{HOST}:{port}", "file",
                                                "c.jpg", buf.getvalue())
                    run_load(HOST, port, request, concurrency=8, seconds=2, warmup=0)
                    for c in LEVELS:
                        results[name][c].append(run_load(HOST, port, request, concurrency=c,
                                                         seconds=args.seconds))
                finally:
                    server.stop()
    otlp.shutdown()
    base = {c: statistics.mean(r.rps for r in results["off"][c]) for c in LEVELS}
    print(f"\n{'tracing':16s} " + " ".join(f"{'c=' + str(c) + ' req/s':>12s} {'÷ off':>6s} "
                                         f"{'p50 ms':>7s} {'p99 ms':>7s}" for c in LEVELS))
    for name, by_level in results.items():
        cells = []
        for c in LEVELS:
            runs = by_level[c]
            rps = statistics.mean(r.rps for r in runs)
            p50 = statistics.mean(r.percentile(0.5) for r in runs) * 1000
            p99 = statistics.mean(r.percentile(0.99) for r in runs) * 1000
            cells.append(f"{rps:12.1f} {rps / base[c]:6.3f} {p50:7.1f} {p99:7.1f}")
        print(f"{name:16s} " + " ".join(cells))
    print(f"({args.rounds} rounds of {args.seconds:g} s per level, taking turns; "
          f"OTLP bytes received: {otlp.RequestHandlerClass.received})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
