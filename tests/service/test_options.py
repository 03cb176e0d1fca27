"""The inference routes' options (query parameters and ``Accept``), in the real app.

No server: requests go through the ASGI app in this process (`TestClient`), which
serves a tiny untrained classifier (3 classes) and detector (3 classes). Valid
values change the answer as documented; invalid ones get a 4xx that names the
option and the value.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from helpers import png_bytes

from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def client(tiny_exports, tiny_detector_export, tmp_path_factory) -> Iterator[TestClient]:
    settings = Settings(models=[tiny_exports[0], tiny_detector_export], backend="eager",
                        tune_batch_size=False, max_batch_size=2, default_top_k=2,
                        cache_dir=tmp_path_factory.mktemp("cache"))
    with TestClient(create_app(settings)) as client:  # runs the lifespan: loads both
        end = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < end, client.get("/readyz").text
            time.sleep(0.05)
        yield client


def post(client: TestClient, route: str, params: dict | list | None = None,
         headers: dict | None = None):
    return client.post(route, params=params, headers=headers,
                       files={"file": ("x.png", png_bytes(), "image/png")})


def refused(response, status: int, code: str) -> str:
    """The error message of a refusal, after checking its status and code."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return error["message"]


@pytest.mark.parametrize(("top_k", "classes"), [(None, 2), (1, 1), (3, 3), (1000, 3)])
def test_top_k_is_how_many_classes_come_back(client, top_k, classes) -> None:
    r = post(client, "/v1/classify", {"top_k": top_k} if top_k else None)
    assert r.status_code == 200, r.text
    predictions = r.json()["results"][0]["predictions"]
    # The default is the setting (OCELLUS_DEFAULT_TOP_K); at most the model's 3 classes.
    assert len(predictions) == classes
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(("route", "params", "message"), [
    ("/v1/classify", {"top_k": 0}, "query.top_k: Input should be greater than or equal to 1 "
                                   "(got '0')"),
    ("/v1/classify", {"top_k": 1001}, "query.top_k: Input should be less than or equal to 1000"),
    ("/v1/classify", {"top_k": "two"}, "query.top_k: Input should be a valid integer"),
    ("/v1/detect", {"conf": 1.5}, "query.conf: Input should be less than or equal to 1"),
    ("/v1/detect", {"conf": "high"}, "query.conf: Input should be a valid number"),
    ("/v1/detect", {"iou": -0.1}, "query.iou: Input should be greater than or equal to 0"),
    ("/v1/detect", {"max_det": 0}, "query.max_det: Input should be greater than or equal to 1"),
    ("/v1/detect", {"agnostic": "perhaps"}, "query.agnostic: Input should be a valid boolean"),
    ("/v1/detect", {"multi_label": "2"}, "query.multi_label: Input should be a valid boolean"),
    ("/v1/detect", {"render": "maybe"}, "query.render: Input should be a valid boolean"),
    ("/v1/detect", {"classes": "a"}, "classes: expected comma-separated class ids (integers), "
                                     "got 'a'"),
    ("/v1/detect", {"classes": "-1"}, "classes: expected comma-separated class ids"),
    ("/v1/detect", {"classes": "1.5"}, "classes: expected comma-separated class ids"),
    ("/v1/detect", {"classes": "0,3"}, "classes: ids [3] are out of range; the model has 3 "
                                       "classes (ids 0..2)"),
])
def test_an_invalid_option_is_a_422_naming_it(client, route, params, message) -> None:
    assert refused(post(client, route, params), 422, "invalid_request").startswith(message)


def test_the_model_option_picks_a_model_of_the_routes_task(client) -> None:
    r = post(client, "/v1/classify", {"model": "tiny"})
    assert r.status_code == 200 and r.json()["model"]["name"] == "tiny"
    message = refused(post(client, "/v1/classify", {"model": "nope"}), 404, "model_not_found")
    assert "no model named 'nope'" in message and "'tinydet': 'detect'" in message
    message = refused(post(client, "/v1/classify", {"model": "tinydet"}), 400, "wrong_task")
    assert "send it to /v1/detect" in message
    refused(post(client, "/v1/detect", {"model": "tiny"}), 400, "wrong_task")


def test_detection_options_filter_the_answer(client) -> None:
    def boxes(params) -> list[dict]:
        r = post(client, "/v1/detect", params)
        assert r.status_code == 200, r.text
        return r.json()["results"][0]["detections"]

    everything = boxes({"conf": 0, "max_det": 1000})
    assert everything, "an untrained detector at conf=0 still proposes boxes"
    assert len(boxes({"conf": 0, "max_det": 2})) == 2
    assert boxes({"conf": 1}) == []
    assert {d["class_id"] for d in boxes({"conf": 0, "classes": "0,2"})} <= {0, 2}
    # Repeated and comma-separated ids mean the same; blanks between commas are skipped.
    assert (boxes([("conf", 0), ("classes", "0"), ("classes", "2")])
            == boxes({"conf": 0, "classes": " 0 , 2,"}))
    for flags in ({"agnostic": "true"}, {"multi_label": "false"}, {"multi_label": "1"}):
        assert isinstance(boxes({"conf": 0, **flags}), list)


@pytest.mark.parametrize(("params", "accept", "media_type"), [
    ({}, None, "application/json"),
    ({"render": "true"}, None, "image/png"),
    ({"render": "true"}, "image/jpeg", "image/jpeg"),
    ({}, "image/png", "image/png"),
    ({}, "image/jpeg;q=0.9, application/json", "image/jpeg"),
    ({}, "application/json, image/png", "application/json"),
    ({"render": "false"}, "image/png", "application/json"),
])
def test_render_and_accept_choose_json_or_an_image(client, params, accept, media_type) -> None:
    r = post(client, "/v1/detect", params, headers={"Accept": accept} if accept else None)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0] == media_type
    if media_type != "application/json":
        assert int(r.headers["x-detections"]) >= 0
        assert r.content[:3] == (b"\x89PN" if media_type == "image/png" else b"\xff\xd8\xff")
