"""The CUDA path against the CPU reference, through the real server, under batching.

Serves the default models (the ImageNet classifier and the NanoDet COCO
detector) on cpu with the eager backend, one request at a time (the reference),
then on cuda with the eager and the auto backends, 16 requests at a time so the
batcher batches them, and prints every answer that differs (top-1 label, the
labels of the boxes; and the worst score difference and box IoU).

    python scripts/cuda_check.py            # on a machine with a GPU
    CHECK_DEVICE=cpu python scripts/cuda_check.py   # a dry run of the script

Photos: ``CHECK_PHOTOS`` (default Debian's darknet samples). Models: the default
cache (``OCELLUS_CACHE_DIR``; ``make setup`` fills it). Logs go to ``$OUT``.
"""

import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("OUT", "/tmp/ocellus-cuda-check"))
CACHE = Path(os.environ.get("OCELLUS_CACHE_DIR", Path.home() / ".cache" / "ocellus"))
PHOTOS = sorted(Path(os.environ.get("CHECK_PHOTOS", "/usr/share/darknet/data")).glob("*.jpg"))
DEVICE = os.environ.get("CHECK_DEVICE", "cuda")  # cpu: a dry run of this script


def post(port: int, route: str, photo: Path, query: str = "") -> dict:
    boundary = "ocellusboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{photo.name}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + \
        photo.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{route}{query}", data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def serve(device: str, backend: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "OCELLUS_DEVICE": device, "OCELLUS_BACKEND": backend,
           "OCELLUS_CACHE_DIR": str(CACHE), "PYTHONUNBUFFERED": "1"}
    with open(OUT / f"serve-{device}-{backend}.log", "w") as log:  # the child keeps its copy
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    end = time.monotonic() + 300
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                if r.status == 200:
                    return proc
        except Exception:  # noqa: BLE001
            pass
        if proc.poll() is not None:
            raise SystemExit(f"{device} server exited; see serve-{device}.log")
        time.sleep(1)
    raise SystemExit(f"{device} server not ready in 300 s")


def answers(port: int, concurrent: bool) -> dict:
    jobs = [(route, p, q) for p in PHOTOS for route, q in
            (("/v1/classify", "?top_k=5"), ("/v1/detect", "?conf=0.3"),
             ("/v1/detect", "?conf=0.1&multi_label=false"))]
    if concurrent:
        with cf.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda j: post(port, *j), jobs * 2))[:len(jobs)]
    else:
        results = [post(port, *j) for j in jobs]
    return {f"{r}{q} {p.name}": res for (r, p, q), res in zip(jobs, results, strict=True)}


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 1.0


def compare(ref: dict, got: dict) -> list[str]:
    diffs = []
    worst_score, worst_iou = 0.0, 1.0
    for key, r in ref.items():
        g = got[key]
        r0, g0 = r["results"][0], g["results"][0]
        if "predictions" in r0:
            rp, gp = r0["predictions"], g0["predictions"]
            if rp[0]["label"] != gp[0]["label"]:
                diffs.append(f"{key}: top-1 {rp[0]['label']} vs {gp[0]['label']}")
            worst_score = max(worst_score, abs(rp[0]["score"] - gp[0]["score"]))
        else:
            rd, gd = r0["detections"], g0["detections"]
            if [d["label"] for d in rd] != [d["label"] for d in gd]:
                diffs.append(f"{key}: labels {[d['label'] for d in rd]} vs "
                             f"{[d['label'] for d in gd]}")
                continue
            for a, b in zip(rd, gd, strict=True):
                worst_score = max(worst_score, abs(a["score"] - b["score"]))
                worst_iou = min(worst_iou, iou(a["box"], b["box"]))
    print(f"  worst score difference {worst_score:.2e}, worst box IoU {worst_iou:.5f}")
    return diffs


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    if not PHOTOS:
        raise SystemExit("no photos: set CHECK_PHOTOS to a folder of JPEGs")
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
    cpu = serve("cpu", "eager", 8101)
    try:
        reference = answers(8101, concurrent=False)
    finally:
        cpu.terminate()
        cpu.wait(30)
    ok = True
    for backend in ("eager", "auto"):
        gpu = serve(DEVICE, backend, 8102)
        try:
            models = json.loads(urllib.request.urlopen("http://127.0.0.1:8102/v1/models").read())
            print(f"{DEVICE} {backend}:", json.dumps({m["name"]: (m.get("device"), m.get("backend"))
                                                   for m in models["models"]}))
            got = answers(8102, concurrent=True)
            t0 = time.perf_counter()
            answers(8102, concurrent=True)
            seconds = time.perf_counter() - t0
            print(f"  {3 * len(PHOTOS) * 2} concurrent requests in {seconds:.2f} s")
            metrics = urllib.request.urlopen("http://127.0.0.1:8102/metrics").read().decode()
            batches = [ln for ln in metrics.splitlines()
                       if ln.startswith(("ocellus_batch_size_sum", "ocellus_batch_size_count"))]
            print("  ", batches)
        finally:
            gpu.terminate()
            gpu.wait(30)
        diffs = compare(reference, got)
        print(f"  {len(reference)} answers compared with cpu eager one at a time: "
              f"{len(diffs)} differ")
        for d in diffs:
            print("   ", d)
        ok &= not diffs
    (OUT / "answers-cpu.json").write_text(json.dumps(reference, indent=1))
    print("OK" if ok else "DIFFERENCES")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
