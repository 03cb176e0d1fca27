"""LitServe and TorchServe serving the same Ocellus export, for serve_load.py.

Each tool is installed by `ensure_venv` in its own virtualenv OUTSIDE the repo
(``~/.cache/ocellus-bench/<tool>``). To save disk and time the venv sees this
project's site-packages through a ``.pth`` file (torch, torchvision, Pillow),
and pip installs only the tool itself there. Both servers run the same model
the same way (Ocellus' decode, preprocessing and eager fp32 channels_last
forward), with each tool's recommended batching.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

BENCH_HOME = Path.home() / ".cache" / "ocellus-bench"
REPO = Path(__file__).resolve().parent.parent
PACKAGES = {"litserve": ["litserve"], "torchserve": ["torchserve", "torch-model-archiver"]}


def ensure_venv(tool: str) -> Path:
    """The tool's venv (created and pip-installed on first use); returns its bin folder."""
    venv = BENCH_HOME / tool
    bin_dir = venv / "bin"
    marker = venv / ".installed"
    if marker.is_file():
        return bin_dir
    BENCH_HOME.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = Path(sysconfig.get_paths()["purelib"])  # this project's venv
    pth = next((venv / "lib").glob("python3*/site-packages")) / "ocellus-deps.pth"
    pth.write_text(f"{site}\n{REPO}\n")
    subprocess.run([str(bin_dir / "pip"), "install", "-q", *PACKAGES[tool]], check=True)
    marker.write_text("ok\n")
    return bin_dir


LITSERVE_APP = '''
import sys, torch, litserve as ls
from models.imaging import decode_image
from models.predictor import load_predictor

class Api(ls.LitAPI):
    def setup(self, device):
        self.p = load_predictor(sys.argv[1])
        self.p.forward(torch.zeros(8, 3, self.p.input_size, self.p.input_size))

    def decode_request(self, request):
        data = request["file"].file.read()
        img = decode_image(data, target_size=self.p.preprocessing.decode_size).tensor
        return self.p.preprocess(img)[0]

    def predict(self, batch):
        x = torch.stack(batch) if isinstance(batch, list) else batch
        return self.p.postprocess(self.p.forward(x), [None] * len(x), top_k=5)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, result):
        return {"predictions": [{"label": c.label, "score": c.score} for c in result]}

if __name__ == "__main__":
    # LitServe's documented batching (max_batch_size with a short batch_timeout) and its
    # high-throughput queue (ZeroMQ); one worker and one API server on 2 cores.
    api = Api(max_batch_size=8, batch_timeout=0.005)
    ls.LitServer(api, accelerator="cpu", workers_per_device=1, fast_queue=True).run(
        port=int(sys.argv[2]), host="127.0.0.1", num_api_servers=1,
        generate_client_file=False)
'''


def litserve_command(export: Path, port: int, workdir: Path) -> list[str]:
    bin_dir = ensure_venv("litserve")
    app = workdir / "litserve_app.py"
    app.write_text(textwrap.dedent(LITSERVE_APP))
    return [str(bin_dir / "python"), str(app), str(export), str(port)]


TORCHSERVE_HANDLER = '''
import os, torch
from ts.torch_handler.base_handler import BaseHandler
from models.imaging import decode_image
from models.predictor import load_predictor

class Handler(BaseHandler):
    def initialize(self, context):
        self.p = load_predictor(os.environ["OCELLUS_BENCH_EXPORT"])
        self.initialized = True

    def preprocess(self, requests):
        out = []
        for r in requests:
            data = r.get("data") or r.get("body")
            img = decode_image(bytes(data), target_size=self.p.preprocessing.decode_size).tensor
            out.append(self.p.preprocess(img)[0])
        return torch.stack(out)

    def inference(self, x):
        return self.p.forward(x)

    def postprocess(self, logits):
        results = self.p.postprocess(logits, [None] * len(logits), top_k=5)
        return [{"predictions": [{"label": c.label, "score": c.score} for c in r]}
                for r in results]
'''


def torchserve_command(export: Path, port: int, workdir: Path) -> tuple[list[str], dict]:
    """Archive the handler, write config.properties; the command and its environment."""
    if shutil.which("java") is None:
        raise RuntimeError("TorchServe needs Java (17+) on PATH; none found")
    bin_dir = ensure_venv("torchserve")
    store = workdir / "model_store"
    store.mkdir(parents=True, exist_ok=True)
    handler = workdir / "ocellus_handler.py"
    handler.write_text(textwrap.dedent(TORCHSERVE_HANDLER))
    subprocess.run([str(bin_dir / "torch-model-archiver"), "--model-name", "ocellus",
                    "--version", "1.0", "--handler", str(handler), "--export-path", str(store),
                    "--force"], check=True)
    # TorchServe's documented batching: batch_size with max_batch_delay (ms), one worker
    # per model on a 2-core CPU box.
    config = workdir / "config.properties"
    models = json.dumps({"ocellus": {"1.0": {
        "marName": "ocellus.mar", "minWorkers": 1, "maxWorkers": 1, "batchSize": 8,
        "maxBatchDelay": 5, "responseTimeout": 120}}})
    config.write_text(textwrap.dedent(f"""\
        inference_address=http://127.0.0.1:{port}
        management_address=http://127.0.0.1:{port + 1}
        metrics_address=http://127.0.0.1:{port + 2}
        disable_token_authorization=true
        enable_envvars_config=true
        install_py_dep_per_model=false
        default_workers_per_model=1
        load_models=ocellus.mar
        models={models}
        """))
    env = {"OCELLUS_BENCH_EXPORT": str(export), "PYTHONPATH": str(REPO),
           "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "LOG_LOCATION": str(workdir),
           "METRICS_LOCATION": str(workdir)}
    cmd = [str(bin_dir / "torchserve"), "--start", "--foreground", "--ncs", "--model-store",
           str(store), "--ts-config", str(config), "--disable-token-auth"]
    return cmd, env
