"""``ocellus quantize``: the int8 export, its accuracy gate, and serving it over HTTP."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from cli.main import main as ocellus
from models.errors import ExportError
from models.export import read_manifest
from models.int8 import INT8_BIN, INT8_XML
from models.predictor import load_predictor
from training.quantize import EXIT_REFUSED, EXIT_WRITTEN

# torchvision 0.29's codecs warn that they are deprecated (models/imaging.py).
pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::DeprecationWarning:torchvision")]


@pytest.fixture(scope="module")
def int8_export(fashion_model, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("int8") / "fashion-int8"
    report = out.parent / "report.json"
    code = ocellus(["quantize", "--model", str(fashion_model[0]), "--out", str(out),
                    "--report", str(report)])
    assert code == EXIT_WRITTEN, report.read_text() if report.exists() else code
    return out, json.loads(report.read_text())


def test_the_int8_export_records_its_calibration_and_drop(int8_export, fashion_model) -> None:
    out, report = int8_export
    manifest = read_manifest(out)
    q = manifest.quantization
    assert manifest.precision == "int8" and report["accepted"]
    assert set(q["files"]) == {INT8_XML, INT8_BIN} and all(len(h) == 64
                                                           for h in q["files"].values())
    assert q["calibration"]["images"] == 300 and "openvino" in q["toolchain"]
    fp32, int8 = q["evaluation"]["fp32"], q["evaluation"]["int8"]
    assert fp32["num_images"] == int8["num_images"] == 500
    # The fp32 score is the fp32 export's own, re-measured through the same Predictor.
    assert fp32["top1"] == pytest.approx(read_manifest(fashion_model[0]).metrics["val"]["top1"])
    assert q["drop"]["top1"] == pytest.approx(fp32["top1"] - int8["top1"])
    assert q["drop"]["top1"] <= 0.005 and q["drop"]["max_class_recall"] <= 0.05
    print(f"int8 top-1 {int8['top1']:.4f} vs fp32 {fp32['top1']:.4f}")
    predictor = load_predictor(out)
    assert predictor.precision == "int8"
    assert load_predictor(out, precision="fp32").precision == "fp32"


def test_a_tampered_int8_file_is_refused(int8_export, tmp_path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(int8_export[0], copy)
    with open(copy / INT8_BIN, "r+b") as fh:
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ExportError, match="sha256 mismatch"):
        load_predictor(copy)


def test_a_broken_calibration_is_refused_and_writes_nothing(fashion_model, fashion_mnist_tree,
                                                           tmp_path) -> None:
    """Calibrated on black images, activation ranges are far too narrow: the gate refuses."""
    black = tmp_path / "black" / "all"
    black.mkdir(parents=True)
    for i in range(8):
        Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(black / f"{i}.png")
    small = tmp_path / "small"  # 5 val images per class: enough to see the collapse
    for cls in sorted((fashion_mnist_tree / "val").iterdir()):
        for split in ("train", "val"):
            (small / split / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:5]:
            (small / "val" / cls.name / f.name).write_bytes(f.read_bytes())
            (small / "train" / cls.name / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "broken-int8"
    report = tmp_path / "report.json"
    code = ocellus(["quantize", "--model", str(fashion_model[0]), "--out", str(out),
                    "--calib-data", str(black.parent), "--eval-data", str(small),
                    "--report", str(report)])
    body = json.loads(report.read_text())
    assert code == EXIT_REFUSED, body
    assert not out.exists() and not list(tmp_path.glob(".broken-int8.*"))
    assert not body["accepted"] and "more than --max-drop" in body["reasons"][0], body
    print(f"broken calibration: top-1 drop {body['drop']['top1']:.3f}")


async def _classify_all(url: str, files: list[Path]) -> list[str]:
    async with httpx.AsyncClient(timeout=60) as client:
        responses = await asyncio.gather(*(
            client.post(f"{url}/v1/classify", files={"file": (f.name, f.read_bytes())})
            for f in files))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    return [r.json()["results"][0]["predictions"][0]["label"] for r in responses]


def test_the_service_serves_the_int8_model_batched_as_alone(int8_export, start_server,
                                                           fashion_mnist_tree) -> None:
    out, _ = int8_export
    server = start_server("--model", str(out), env={"OCELLUS_MAX_DELAY_MS": "200",
                                                    "OCELLUS_TUNE_BATCH_SIZE": "false"})
    (model,) = httpx.get(f"{server.url}/v1/models").json()["models"]
    assert (model["precision"], model["backend"]) == ("int8", "int8"), model
    assert model["accuracy_drop"]["top1"] <= 0.005
    assert model["backend_details"]["agreement"]["int8"] > 0.5  # reported, not gated
    val = fashion_mnist_tree / "val"
    files = [sorted(c.iterdir())[i] for c in sorted(val.iterdir()) for i in range(2)]
    predictor = load_predictor(out)
    from training.images import read_image

    alone = [predictor.predict([read_image(f)], top_k=1)[0][0].label for f in files]
    batched = asyncio.run(_classify_all(server.url, files))
    assert batched == alone
    hits = sum(label == f.parent.name for label, f in zip(alone, files, strict=True))
    assert hits >= 14, f"{hits}/20"
    # The differential: int8, batched by the real server, against eager fp32 answering one
    # image at a time. Tolerance: top-1 agrees on at least 90% (the accuracy drop itself is
    # gated on the 500 val images when the export is made).
    fp32 = load_predictor(out, precision="fp32")
    reference = [fp32.predict([read_image(f)], top_k=1)[0][0].label for f in files]
    agree = sum(a == b for a, b in zip(batched, reference, strict=True)) / len(files)
    print(f"int8 batched over HTTP agrees with eager fp32 alone on {agree:.0%} of "
          f"{len(files)} images")
    assert agree >= 0.9, (batched, reference)


def test_the_registry_publishes_the_int8_files_with_the_weights(int8_export, tmp_path) -> None:
    from models.registry import ModelRegistry

    registry = ModelRegistry(tmp_path / "registry")
    version = registry.publish("fashion", int8_export[0])
    assert registry.verify("fashion", version).precision == "int8"
    assert load_predictor(registry.path("fashion", version)).precision == "int8"
    (registry.path("fashion", version) / INT8_XML).unlink()
    with pytest.raises(ExportError, match=INT8_XML):
        registry.verify("fashion", version)


def test_a_quantization_section_that_is_not_an_object_is_refused(int8_export, tmp_path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(int8_export[0], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "quantization": None}))
    with pytest.raises(ExportError, match="quantization must be an object"):
        read_manifest(copy)


def test_the_defaults_int8_variants_passed_their_agreement_gate(default_int8_variants) -> None:
    """`make setup` quantized both defaults with no labels: gated on held-out photos."""
    from models.int8 import verify_int8_files
    from training.quantize import UNLABELLED_GATE

    for name, (fp32, int8) in default_int8_variants.items():
        manifest = read_manifest(int8)
        assert (manifest.name, manifest.precision) == (name, "int8")
        assert manifest.weights_sha256 == read_manifest(fp32).weights_sha256
        verify_int8_files(int8, manifest.quantization)
        found = manifest.quantization["agreement"]
        assert found["images"] >= 24, found
        for measure, floor in UNLABELLED_GATE[manifest.task].items():
            assert found[measure] >= floor, (name, measure, found)
        assert "drop" not in manifest.quantization  # nothing labelled to measure one on
        print(f"{name}: agreement with fp32 {found}")


def test_the_service_serves_the_defaults_int8_variants(default_int8_variants, start_server,
                                                      tmp_path_factory) -> None:
    from models.export import MANIFEST_FILE

    cache = tmp_path_factory.mktemp("int8-defaults-cache")
    (cache / "models").mkdir()
    for fp32, int8 in default_int8_variants.values():
        for export in (fp32, int8):
            (cache / "models" / export.name).symlink_to(export, target_is_directory=True)
    assert all((cache / "models" / p.name / MANIFEST_FILE).is_file()
               for pair in default_int8_variants.values() for p in pair)
    server = start_server(env={"OCELLUS_CACHE_DIR": str(cache),
                               "OCELLUS_TUNE_BATCH_SIZE": "false"})
    models = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
    assert set(models) == set(default_int8_variants)
    for name, m in models.items():
        assert (m["precision"], m["backend"]) == ("int8", "int8"), m
        assert m["agreement_with_fp32"] == read_manifest(
            default_int8_variants[name][1]).quantization["agreement"]
        assert m["accuracy_drop"] is None
    dog = Path("/usr/share/darknet/data/dog.jpg").read_bytes()
    r = httpx.post(f"{server.url}/v1/detect", files={"file": ("dog.jpg", dog)}, timeout=60)
    assert r.status_code == 200, r.text
    labels = {d["label"] for d in r.json()["results"][0]["detections"]}
    assert {"dog", "bicycle"} <= labels, labels
    r = httpx.post(f"{server.url}/v1/classify", files={"file": ("dog.jpg", dog)}, timeout=60)
    assert r.status_code == 200, r.text
    fp32 = load_predictor(default_int8_variants["imagenet"][0])
    from training.images import read_image

    expected = fp32.predict([read_image(Path("/usr/share/darknet/data/dog.jpg"))], top_k=1)
    assert r.json()["results"][0]["predictions"][0]["label"] == expected[0][0].label
