"""Request IDs and structured logs, through a real server writing JSON lines.

A caller's ``X-Request-ID`` (when safe) comes back on every response, error
bodies included, and is on the request's access line and on the batch line of
the forward pass it shared; without one, the service makes one. Secrets sent
with requests never reach the log.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import threading
import time

import httpx
import pytest
from helpers import QUICK_START, png_bytes

pytestmark = pytest.mark.slow

API_KEY = "key-that-must-not-be-logged-7f3a"
ADMIN_TOKEN = "admin-token-that-must-not-be-logged-91c2"


@pytest.fixture(scope="module")
def server(start_server, tiny_exports):
    # A long batching window: two requests sent together share one forward pass.
    return start_server("--model", str(tiny_exports[0]), env={
        **QUICK_START, "OCELLUS_LOG_FORMAT": "json", "OCELLUS_API_KEYS": API_KEY,
        "OCELLUS_ADMIN_TOKEN": ADMIN_TOKEN, "OCELLUS_MAX_DELAY_MS": "500",
        "OCELLUS_DECODE_THREADS": "1"})


def _lines(server, timeout: float = 10, until=lambda lines: True) -> list[dict]:
    """The server's JSON log lines, once `until` holds for them (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(x) for x in server.log.read_text().splitlines()
                 if x.startswith("{")]
        if until(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def _classify(url: str, request_id: str | None = None, **headers) -> httpx.Response:
    return httpx.post(f"{url}/v1/classify", headers={
        "X-API-Key": API_KEY, **({"X-Request-ID": request_id} if request_id else {}), **headers},
        files={"file": ("a.png", png_bytes())}, timeout=30)


def test_the_callers_id_comes_back_and_is_on_the_access_line(server) -> None:
    r = _classify(server.url, "order-1234:attempt-2")
    assert r.status_code == 200 and r.headers["x-request-id"] == "order-1234:attempt-2"
    lines = _lines(server, until=lambda ls: any(
        x.get("event") == "access" and x.get("request_id") == "order-1234:attempt-2" for x in ls))
    (access,) = [x for x in lines if x.get("event") == "access"
                 and x.get("request_id") == "order-1234:attempt-2"]
    assert access["route"] == "/v1/classify" and access["status"] == 200
    assert access["model"] == "tiny" and access["version"] == "1" and access["images"] == 1
    assert access["latency_ms"] > 0 and {"time", "level", "logger", "message"} <= set(access)
    # One access line per request: uvicorn's own is off.
    assert not [x for x in lines if x.get("logger") == "uvicorn.access"]


def test_without_a_safe_id_the_service_makes_one(server) -> None:
    made = _classify(server.url).headers["x-request-id"]
    for unsafe in ("x" * 129, "two words", "semi;colon", "<script>"):
        r = _classify(server.url, unsafe)
        assert r.status_code == 200
        assert r.headers["x-request-id"] not in (unsafe, made), unsafe
    assert len(made) == 32


def test_errors_carry_the_id_in_header_and_body(server) -> None:
    for r in (httpx.post(f"{server.url}/v1/classify", headers={
                  "X-API-Key": API_KEY, "X-Request-ID": "bad-image-1"},
                  files={"file": ("a.png", b"not an image")}),
              httpx.post(f"{server.url}/v1/classify", headers={"X-Request-ID": "bad-image-1"},
                         files={"file": ("a.png", png_bytes())}),  # no key: 401
              httpx.post(f"{server.url}/v2/models/nope/infer", content=b"{}", headers={
                  "X-API-Key": API_KEY, "X-Request-ID": "bad-image-1"})):
        assert r.status_code in (400, 401, 404), r.text
        assert r.headers["x-request-id"] == "bad-image-1"
        error = r.json()
        assert (error.get("request_id") or error["error"]["request_id"]) == "bad-image-1", error


def test_a_batch_line_names_the_requests_it_served(server) -> None:
    """A pair sent together shares a forward pass when the second is decoding as the
    first is queued (service/batcher.py); that is likely, not certain, so each pair
    is sent on connections opened beforehand and released at once (a barrier), up
    to fifteen pairs, and every batch line must name exactly the requests it served."""
    def send(rid: str, ready: threading.Barrier) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            client.get("/healthz")  # the connection is open before the race starts
            ready.wait(timeout=10)
            return client.post("/v1/classify", headers={"X-API-Key": API_KEY,
                                                         "X-Request-ID": rid},
                               files={"file": ("a.png", png_bytes())})

    shared = None
    for attempt in range(15):
        ids = [f"pair{attempt}-a", f"pair{attempt}-b"]
        ready = threading.Barrier(2)
        with cf.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda rid, ready=ready: send(rid, ready), ids))
        assert [a.headers["x-request-id"] for a in answers] == ids
        lines = _lines(server, until=lambda ls, ids=ids: sum(
            len(set(x.get("request_ids", ())) & set(ids)) for x in ls) == 2)
        batches = [x for x in lines if x.get("event") == "batch"
                   and set(x["request_ids"]) & set(ids)]
        # Each request in exactly one batch line, with its own images counted.
        assert sorted(i for b in batches for i in b["request_ids"]) == ids, batches
        assert all(b["images"] == len(b["request_ids"]) for b in batches), batches
        if len(batches) == 1:
            shared = batches[0]
            break
    assert shared is not None, "no pair of fifteen shared a forward pass"
    assert shared["model"] == "tiny" and shared["images"] == 2


def test_secrets_never_reach_the_log(server) -> None:
    _classify(server.url, "with-key")
    _classify(server.url, "wrong-key", **{"X-API-Key": API_KEY + "-wrong"})
    for token in (ADMIN_TOKEN, ADMIN_TOKEN + "-wrong"):  # the admin API, right and wrong
        httpx.post(f"{server.url}/v1/models/tiny/reload",
                   headers={"Authorization": f"Bearer {token}"})
    httpx.get(f"{server.url}/v1/models", params={"api_key": API_KEY},
              headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    _lines(server, until=lambda ls: sum(x.get("event") == "access" for x in ls) >= 5)
    text = server.log.read_text()
    for secret in (API_KEY, ADMIN_TOKEN):
        assert secret not in text
