"""The error boundary (service/errors.py) in the real app, without a server or a model.

A route added for the test raises each error; the app built by `create_app` maps it.
"""

from __future__ import annotations

import errno

import pytest
from fastapi import Query
from fastapi.testclient import TestClient
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from models import errors as domain
from service.app import create_app
from service.errors import RequestError
from service.schemas import ErrorResponse
from service.settings import Settings

# (error, status, code, the rejection counted: ocellus_rejected_requests_total's reason)
CASES = [
    (domain.ImageTooLargeError("17 MB over the 16 MB limit"), 413, "too_large", "too_large"),
    (domain.UnsupportedImageFormatError("a PDF"), 415, "unsupported_media_type", "unsupported"),
    (domain.ImageDecodeError("truncated"), 400, "bad_image", "bad_image"),
    (domain.TaskMismatchError("a detect model cannot classify"), 400, "wrong_task", None),
    (domain.ModelNotReadyError("no model named 'x'"), 404, "model_not_found", None),
    (domain.RegistryLockedError("held by pid 7"), 409, "locked", None),
    (domain.VersionRefusedError("bad hash"), 409, "version_refused", None),
    (domain.RegistryError("no registry"), 409, "registry_conflict", None),
    (domain.InferenceTimeoutError("too busy", retry_after=3), 503, "timeout", "timeout"),
    (domain.ModelsLoadingError("still loading"), 503, "loading", "loading"),
    (domain.ServiceOverloadedError("queue full", retry_after=2), 503, "overloaded", "overload"),
    (RequestError("classes: ids [9] are out of range"), 422, "invalid_request", None),
    (RequestError("17 files", status=413, code="too_many_files"), 413, "too_many_files",
     "too_large"),
    # A domain error with no status of its own is the request's fault.
    (domain.ExportError("not an export"), 400, "bad_request", None),
    (domain.DatasetError("no images"), 400, "bad_request", None),
    (HTTPException(403, "invalid admin token"), 403, "forbidden", None),
    (HTTPException(401, "missing admin token", headers={"WWW-Authenticate": "Bearer"}), 401,
     "unauthorized", None),
    (HTTPException(413, "body too large"), 413, "too_large", "too_large"),
    (HTTPException(418, "teapot"), 418, "http_error", None),
    (ClientDisconnect(), 499, "client_disconnected", "disconnected"),
    (OSError(errno.ENOSPC, "No space left on device"), 507, "insufficient_storage",
     "insufficient_storage"),
]


@pytest.fixture(scope="module")
def app():
    app = create_app(Settings(default_models=False))
    raised: list[BaseException] = []

    @app.get("/raise")
    async def raise_it() -> None:
        raise raised[0]

    @app.get("/query")
    async def query(n: int = Query(ge=1, le=10)) -> dict:
        return {"n": n}

    app.state.raised = raised
    return app


@pytest.fixture(scope="module")
def client(app) -> TestClient:
    # Not entered as a context manager: no lifespan, so nothing is loaded.
    return TestClient(app, raise_server_exceptions=False)


def answer(app, client: TestClient, error: BaseException):
    app.state.raised[:] = [error]
    return client.get("/raise")


def rejected(app, reason: str) -> float:
    return app.state.metrics.registry.get_sample_value(
        "ocellus_rejected_requests_total", {"reason": reason}) or 0.0


@pytest.mark.parametrize(("error", "status", "code", "reason"), CASES,
                         ids=[type(c[0]).__name__ + str(c[1]) for c in CASES])
def test_each_error_maps_to_its_status_in_the_one_shape(app, client, error, status, code,
                                                       reason) -> None:
    before = rejected(app, reason) if reason else 0.0
    r = answer(app, client, error)
    assert r.status_code == status, r.text
    body = ErrorResponse.model_validate(r.json())  # {"error": {status, code, message}}
    assert set(r.json()) == {"error"}
    assert (body.error.status, body.error.code) == (status, code)
    if isinstance(error, HTTPException):
        assert body.error.message == error.detail
    elif str(error):
        assert body.error.message == str(error) or status == 507
    if reason is not None:
        assert rejected(app, reason) == before + 1


@pytest.mark.parametrize("error", [domain.InferenceTimeoutError("late", retry_after=3),
                                   domain.ModelsLoadingError("loading"),
                                   domain.ServiceOverloadedError("full", retry_after=2)])
def test_every_503_says_when_to_retry(app, client, error) -> None:
    r = answer(app, client, error)
    assert r.status_code == 503 and r.headers["retry-after"] == str(error.retry_after)


def test_image_errors_count_as_decode_failures(app, client) -> None:
    def failures(reason: str) -> float:
        return app.state.metrics.registry.get_sample_value(
            "ocellus_image_decode_failures_total", {"reason": reason}) or 0.0

    before = failures("unsupported")
    answer(app, client, domain.UnsupportedImageFormatError("a PDF"))
    assert failures("unsupported") == before + 1


@pytest.mark.parametrize("error", [RuntimeError("CUDA error at /opt/secret/kernel.cu:12"),
                                   KeyError("weights.safetensors"),
                                   OSError(errno.EACCES, "Permission denied", "/srv/secret")])
def test_unexpected_errors_are_a_plain_500_without_internals(app, client, error,
                                                            caplog) -> None:
    r = answer(app, client, error)
    assert r.status_code == 500
    assert r.json() == {"error": {"status": 500, "code": "internal_error",
                                  "message": "internal server error",
                                  "request_id": r.headers["x-request-id"]}}
    assert "secret" not in r.text and "safetensors" not in r.text
    assert "unhandled error on GET /raise" in caplog.text  # logged with its traceback


@pytest.mark.parametrize(("url", "message"), [
    ("/query?n=0", "query.n: Input should be greater than or equal to 1 (got '0')"),
    ("/query?n=ten", "query.n: Input should be a valid integer"),
    ("/query", "missing query.n"),
])
def test_invalid_parameters_are_a_422_naming_the_parameter_and_the_value(client, url,
                                                                         message) -> None:
    r = client.get(url)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and error["message"].startswith(message), error


def test_an_unknown_path_and_method_keep_the_shape(client) -> None:
    assert client.get("/v1/nope").json()["error"]["code"] == "not_found"
    r = client.delete("/healthz")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
