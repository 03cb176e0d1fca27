"""A refused model is isolated: bad registry entries and exports refuse only themselves.

Through real servers: a registry whose ``current`` files are empty, garbage or
not text, and a version whose manifest names fewer labels than the model has
outputs, beside a good name; and a bad export given with --model. Also: what
/v1/models shows without the admin token, and that a blank admin token is none.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from helpers import QUICK_START, png_bytes

from models.export import MANIFEST_FILE
from models.registry import ModelRegistry

pytestmark = pytest.mark.slow

TOKEN = "admin-s3cret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
SECRET_DATA = "/srv/secret-training-data"
FAST = {**QUICK_START, "OCELLUS_MAX_BATCH_SIZE": "2"}


def _edit_manifest(folder: Path, **changes: object) -> None:
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest.update(changes)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def _metric(url: str, line_prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in httpx.get(f"{url}/metrics").text
               .splitlines() if line.startswith(line_prefix))


@pytest.fixture(scope="module")
def registry_server(start_server, tiny_exports, tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    registry = ModelRegistry(root)
    for name in ("good", "empty", "garbage", "nottext", "labels"):
        registry.publish(name, tiny_exports[0])
        registry.promote(name, "1")
    # The good one records where it was trained from, as a trained export does.
    _edit_manifest(registry.path("good", "1"), dataset={"root": SECRET_DATA, "num_train": 9},
                   training={"args": {"data": SECRET_DATA, "lr": 0.1}, "best_epoch": 0})
    (root / "empty" / "current").write_text("")
    (root / "garbage" / "current").write_text("../../etc/passwd\n")
    (root / "nottext" / "current").write_bytes(b"\xff\xfe\x00\x81")
    _edit_manifest(registry.path("labels", "1"), labels=["red", "green"])  # the model has 3
    server = start_server("--registry", str(root), env={
        **FAST, "OCELLUS_ADMIN_TOKEN": TOKEN, "OCELLUS_REGISTRY_POLL_SECONDS": "0.3"})
    return server, registry


def test_bad_registry_entries_refuse_only_themselves(registry_server) -> None:
    server, registry = registry_server
    r = httpx.get(f"{server.url}/readyz")
    assert r.status_code == 200, r.text  # partial availability: serve what can be served
    body = r.json()
    assert body["status"] == "degraded" and body["models"] == ["good"], body
    refused = {m["name"]: m for m in body["refused"]}
    assert set(refused) == {"empty", "garbage", "nottext", "labels"}, body
    assert "outputs 3 classes, the manifest names 2 labels" in refused["labels"]["reason"]
    assert refused["labels"]["version"] == "1" and refused["labels"]["path"] == "labels/1"
    assert "'../../etc/passwd'" in refused["garbage"]["reason"]
    assert refused["empty"]["version"] is None and refused["empty"]["path"] == "empty/current"
    assert "decode" in refused["nottext"]["reason"]
    assert str(registry.root) not in r.text  # /readyz is open: no host paths
    # The good one serves; a refused one answers 404 with the reason.
    image = {"file": ("x.png", png_bytes(), "image/png")}
    ok = httpx.post(f"{server.url}/v1/classify", params={"model": "good"}, files=image,
                    timeout=60)
    assert ok.status_code == 200, ok.text
    gone = httpx.post(f"{server.url}/v1/classify", params={"model": "labels"}, files=image)
    assert gone.status_code == 404 and "refused at load" in gone.text, gone.text
    # Counted: each refused load, and a gauge of the models refused and not served.
    for name in refused:
        assert _metric(server.url, f'ocellus_model_loads_total{{model="{name}",'
                                   'result="failure"}') == 1
        assert _metric(server.url, f'ocellus_model_refused{{model="{name}"}}') == 1
    assert _metric(server.url, 'ocellus_model_refused{model="good"}') == 0
    # /v1/models lists them too; the admin sees the absolute paths.
    admin = httpx.get(f"{server.url}/v1/models", headers=ADMIN).json()
    paths = {m["name"]: m["path"] for m in admin["refused"]}
    assert paths["labels"] == str(registry.path("labels", "1"))
    assert paths["empty"] == str(registry.root / "empty" / "current")


def test_a_fixed_current_is_served_by_polling(registry_server) -> None:
    server, registry = registry_server
    registry.promote("empty", "1")
    end = time.monotonic() + 30
    while time.monotonic() < end:
        body = httpx.get(f"{server.url}/readyz").json()
        if "empty" in body["models"]:
            break
        time.sleep(0.2)
    assert body["models"] == ["empty", "good"] or sorted(body["models"]) == ["empty", "good"]
    assert "empty" not in {m["name"] for m in body["refused"]}, body
    assert _metric(server.url, 'ocellus_model_refused{model="empty"}') == 0


def test_models_hide_paths_and_training_args_without_the_admin_token(registry_server) -> None:
    server, registry = registry_server
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.get(f"{server.url}/v1/models", headers=headers)
        assert r.status_code == 200
        assert SECRET_DATA not in r.text and str(registry.root) not in r.text, r.text
        good = next(m for m in r.json()["models"] if m["name"] == "good")
        assert good["path"] is None
        assert "args" not in good["manifest"]["training"]
        assert good["manifest"]["dataset"] == {"root": "<redacted>", "num_train": 9}
        assert good["manifest"]["provenance"]["registry_source"] == "<redacted>"
        assert good["manifest"]["labels"] == ["red", "green", "blue"]
    admin = httpx.get(f"{server.url}/v1/models", headers=ADMIN).json()
    good = next(m for m in admin["models"] if m["name"] == "good")
    assert good["path"] == str(registry.path("good", "1"))
    assert good["manifest"]["training"]["args"]["data"] == SECRET_DATA
    assert good["manifest"]["dataset"]["root"] == SECRET_DATA


def test_a_bad_export_given_with_model_is_refused_alone(start_server, tiny_exports,
                                                        tmp_path) -> None:
    # Given through a symlinked folder, as a mount or a ConfigMap's ..data often is: the
    # path in the error is not under the resolved folder, and must not show either.
    (tmp_path / "real" / "broken-export").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    bad = tmp_path / "link" / "broken-export"
    (bad / MANIFEST_FILE).write_text("{not json")
    # A blank admin token (what `${OCELLUS_ADMIN_TOKEN:-}` gave) is no token.
    server = start_server("--model", str(tiny_exports[0]), "--model", str(bad),
                          env={**FAST, "OCELLUS_ADMIN_TOKEN": ""})
    body = httpx.get(f"{server.url}/readyz").json()
    assert body["status"] == "degraded" and body["models"] == ["tiny"], body
    (refused,) = body["refused"]
    assert refused["name"] == "broken-export" and refused["path"] == "broken-export"
    assert "not valid JSON" in refused["reason"] and str(tmp_path) not in refused["reason"]
    off = httpx.post(f"{server.url}/v1/models/tiny/reload", headers={"Authorization": "Bearer"})
    assert off.status_code == 403 and "OCELLUS_ADMIN_TOKEN" in off.text, off.text
    models = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer"}).json()
    assert models["models"][0]["path"] is None and models["refused"][0]["path"] == refused["path"]
