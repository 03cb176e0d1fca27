"""OpenTelemetry traces from the real server, received over OTLP/HTTP by the test.

The receiver decodes each export with the official ``opentelemetry-proto``
messages. A pair of requests sent together (with the caller's W3C
``traceparent``) share one forward pass; the test checks each request's span
tree, the batch span's links to both requests and back, and the attributes.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import secrets
import time
from collections.abc import Iterator

import httpx
import pytest
from helpers import QUICK_START, OtlpReceiver, png_bytes

pytestmark = pytest.mark.slow

STAGES = ("read body", "decode", "queue", "forward", "postprocess", "encode")


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    found = OtlpReceiver()
    yield found
    found.close()


@pytest.fixture(scope="module")
def server(start_server, tiny_exports, receiver):
    return start_server("--model", str(tiny_exports[0]), env={
        **QUICK_START, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_SERVICE_NAME": "ocellus-test", "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OCELLUS_MAX_DELAY_MS": "500", "OCELLUS_DECODE_THREADS": "1"})


def _attrs(span) -> dict:
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}


def _traced(url: str, trace_id: str, parent: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/classify", files={"file": ("a.png", png_bytes())}, timeout=30,
                      headers={"traceparent": f"00-{trace_id}-{parent}-01",
                               "X-Request-ID": f"req-{parent}"})


def _trees(receiver: OtlpReceiver, ids: list[tuple[str, str]], timeout: float = 20) -> list[list]:
    """Each trace's spans, once every stage of it has come (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        trees = [receiver.of_trace(bytes.fromhex(t)) for t, _ in ids]
        if all({s.name for s in tree} >= set(STAGES) for tree in trees) \
                or time.monotonic() > deadline:
            return trees
        time.sleep(0.1)


def test_a_batched_pair_of_requests_traced_stage_by_stage(server, receiver) -> None:
    for _attempt in range(5):  # a pair shares a forward pass often, not always
        ids = [(secrets.token_hex(16), secrets.token_hex(8)) for _ in range(2)]
        with cf.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda tp: _traced(server.url, *tp), ids))
        assert all(a.status_code == 200 for a in answers)
        trees = _trees(receiver, ids)
        forwards = [s for tree in trees for s in tree if s.name == "forward"]
        assert len(forwards) == 2, [[s.name for s in tree] for tree in trees]
        batch_ids = {f.links[0].span_id for f in forwards}
        if len(batch_ids) == 1:
            break
    assert len(batch_ids) == 1, "no pair of five shared a forward pass"

    with receiver.lock:
        (batch,) = [s for s in receiver.spans if s.span_id in batch_ids]
    assert batch.name == "batch" and _attrs(batch)["ocellus.batch.size"] == 2
    assert _attrs(batch)["ocellus.model"] == "tiny"
    roots = []
    for (trace_id, parent), tree in zip(ids, trees, strict=True):
        # The caller's traceparent is honoured: its span is the request span's parent.
        (root,) = [s for s in tree if s.parent_span_id == bytes.fromhex(parent)]
        roots.append(root)
        attrs = _attrs(root)
        assert attrs["ocellus.model"] == "tiny" and attrs["ocellus.model.version"] == "1"
        assert attrs["ocellus.backend"] == "eager" and attrs["ocellus.images"] == 1
        assert attrs["ocellus.request_id"] == f"req-{parent}"  # the caller's ID, traced
        stages = {s.name: s for s in tree if s.name in STAGES}
        assert set(stages) == set(STAGES), [s.name for s in tree]
        assert all(s.parent_span_id == root.span_id for s in stages.values()), trace_id
        # In time order: read, decode, queue, forward, postprocess, encode.
        starts = [stages[n].start_time_unix_nano for n in STAGES]
        assert starts == sorted(starts), starts
        assert all(root.start_time_unix_nano <= s.start_time_unix_nano
                   and s.end_time_unix_nano <= root.end_time_unix_nano
                   for s in stages.values())
        assert _attrs(stages["forward"])["ocellus.batch.size"] == 2
    # The caller's request ID: in the response, the JSON access line and the trace.
    for (trace_id, parent), answer in zip(ids, answers, strict=True):
        assert answer.headers["x-request-id"] == f"req-{parent}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            access = [line for line in map(json.loads, (
                x for x in server.log.read_text().splitlines() if x.startswith("{")))
                if line.get("event") == "access" and line["request_id"] == f"req-{parent}"]
            if access:
                break
            time.sleep(0.1)
        assert access and access[0]["trace_id"] == trace_id, access
    # The batch links to both requests' spans.
    assert {(link.trace_id, link.span_id) for link in batch.links} == {
        (r.trace_id, r.span_id) for r in roots}


def test_probes_are_not_traced(server, receiver) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{server.url}{path}").status_code == 200
    time.sleep(0.5)
    with receiver.lock:
        names = {s.name for s in receiver.spans}
    assert not any(p in n for n in names for p in ("healthz", "readyz", "metrics")), names


def test_latency_exemplars_carry_trace_ids_in_openmetrics(server) -> None:
    """Prometheus asks for OpenMetrics; a traced request's latency bucket names its trace."""
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    assert _traced(server.url, trace_id, parent).status_code == 200
    accept = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
              "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")  # Prometheus's
    r = httpx.get(f"{server.url}/metrics", headers={"Accept": accept})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert f'# {{trace_id="{trace_id}"}}' in r.text
    plain = httpx.get(f"{server.url}/metrics").text  # the classic format: no exemplars
    assert "trace_id" not in plain and "ocellus_http_requests_total" in plain
